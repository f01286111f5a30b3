"""`python -m labeler millionbench`: importing a folder of a million small images.

Writes N small PNGs (default 1,000,000; 28x28 gray, made from Fashion-MNIST's images with the
image's number written into its first three pixels, so no two are the same file) into class
folders under `--images-dir` (kept and reused: writing them takes longer than importing them),
then, in a temporary data folder, imports them with `projects.create_project("folder:...")`
and reports the import time, this process' peak resident memory during the import (VmHWM;
and the peak of its anonymous part, RssAnon, sampled every 0.2 s), the project's files on
disk, and `next_items` as the Label page calls it (bigbench's `_time_next_items`) on the
N-image project before any run.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

from .config import available_cores

CLASSES = 10


def _write_block(args: tuple[str, int, int]) -> int:
    """Write images start..stop-1 (one worker process' share)."""
    import io

    import numpy as np
    from PIL import Image

    folder, start, stop = args
    pixels, truth = _source_images()
    for i in range(start, stop):
        path = Path(folder, str(int(truth[i % len(truth)])), f"{i:07d}.png")
        if path.exists():  # written by an earlier, interrupted call
            continue
        image = pixels[i % len(pixels)].copy()
        image[0, :3] = np.frombuffer(i.to_bytes(3, "little"), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image, "L").save(buffer, format="PNG", compress_level=1)
        partial = path.with_suffix(".part")  # whole files only, even if this is killed
        partial.write_bytes(buffer.getvalue())
        os.replace(partial, path)
    return stop - start


@functools.lru_cache(maxsize=1)
def _source_images():
    """Fashion-MNIST's 70,000 images (H, W) and classes, read once per worker process."""
    from .data.builtin import load_fashion_mnist

    images = load_fashion_mnist()
    return images.pixels[:, 0], images.truth


def write_images(folder: Path, n: int, processes: int = 2) -> float:
    """Write the N images into `folder` unless a finished set is there; return the seconds."""
    from concurrent.futures import ProcessPoolExecutor

    done = folder / f".complete-{n}"
    if done.exists():
        return 0.0
    started = time.perf_counter()
    for k in range(CLASSES):
        (folder / str(k)).mkdir(parents=True, exist_ok=True)
    step = 20_000
    blocks = [(str(folder), a, min(n, a + step)) for a in range(0, n, step)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_write_block, blocks))
    done.touch()
    return time.perf_counter() - started


class _MemoryPeak:
    """Peak RssAnon of this process, sampled in a thread (VmHWM gives the peak of all RSS)."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.peak_anon_kib, self._stop = every_s, 0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_anon_kib = max(self.peak_anon_kib, _status("RssAnon"))
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _status(field: str) -> int:
    """A field of /proc/self/status in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    """Start VmHWM afresh (Linux: writing 5 to clear_refs resets the peak resident size)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure(
    n: int, images_dir: Path, calls: int = 30, processes: int = 2, data_dir: Path | None = None
) -> dict:
    """Write the images (unless there), import them into `data_dir` (kept; by default a
    temporary folder, removed), and return the numbers."""
    import db
    from db import queries

    from . import projects
    from .bigbench import _time_next_items
    from .config import data_dir_set
    from .data import staging  # noqa: F401 - loaded now: the code measured is the code at the start

    write_s = write_images(images_dir, n, processes)
    keep = data_dir is not None
    folder = Path(data_dir) if keep else Path(tempfile.mkdtemp(prefix="labeler-million-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with data_dir_set(folder):
            engine = db.make_engine(f"sqlite:///{folder / 'labeler.db'}")
            Session = db.session_factory(engine)
            seen = []
            _reset_peak()
            before_kib = _status("VmRSS")
            with _MemoryPeak() as peak:
                started = time.perf_counter()
                project = projects.create_project(
                    Session, "million", f"folder:{images_dir}", progress=lambda d, t: seen.append(d)
                )
                import_s = time.perf_counter() - started
            with Session() as session:
                items = queries.count_items(session, project.id)
            disk = sum(f.stat().st_size for f in projects.project_dir(project.id).rglob("*") if f.is_file())
            queue = _time_next_items(Session, project.id, calls)
            engine.dispose()
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "images": n,
        "items": items,
        "write_images_s": round(write_s, 1),
        "import_s": round(import_s, 1),
        "rss_before_mib": round(before_kib / 1024),
        "peak_rss_mib": round(_status("VmHWM") / 1024),
        "peak_anon_mib": round(peak.peak_anon_kib / 1024),
        "progress_updates": len(seen),
        "project_disk_mib": round(disk / 2**20),
        "next_items_before_run": queue,
    }


def cmd_millionbench(args) -> int:
    from .config import check_int

    n = check_int("--images", args.images, 10, 10_000_000)
    result = measure(n, Path(args.images_dir), calls=args.calls, data_dir=args.data_dir)
    print(f"{platform.platform()}, {available_cores()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(
        f"| import {result['items']:,} images | {result['import_s']:.0f} s | peak RSS {result['peak_rss_mib']} MiB "
        f"(anonymous {result['peak_anon_mib']} MiB, {result['rss_before_mib']} MiB before) | "
        f"next_items median {result['next_items_before_run']['median_ms']:.1f} ms, "
        f"p90 {result['next_items_before_run']['p90_ms']:.1f} ms |"
    )
    print(json.dumps(result))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "millionbench", help="import a folder of a million small images; time and memory"
    )
    p.add_argument("--images", type=int, default=1_000_000, help="number of images (default 1,000,000)")
    p.add_argument(
        "--images-dir",
        default=os.path.join(tempfile.gettempdir(), "labeler-million"),
        help="where the generated images are written and kept",
    )
    p.add_argument("--calls", type=int, default=30, help="next_items calls timed")
    p.add_argument(
        "--data-dir", default=None, help="import into this data folder and keep it (default: a temporary one)"
    )
    p.set_defaults(func=cmd_millionbench)
