"""The store that app servers and workers on different machines share: `LABELER_STORAGE_URL`.

Unset (the default), the data folder is the only copy of every file and nothing here runs.
Set to an fsspec URL (`s3://bucket/prefix` for AWS S3, MinIO or Ceph through s3fs; a
`file:///mnt/shared` folder works too), the data folder becomes a working copy: a file is put in
the store under the key it has below the data folder (`projects/<id>/pixels.npy`,
`projects/<id>/runs/<run>.pt`, `projects/<id>/files/<key>`) and fetched into the data folder
when a machine needs it and lacks it. `LABELER_STORAGE_OPTIONS` (a JSON object) passes keyword
arguments to the filesystem, e.g. `{"endpoint_url": "http://minio:9000"}`; the usual AWS
variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`) work as well.

Every failure to reach the store is a StorageError: one sentence saying what to check.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import SettingError, storage_options, storage_url


class StorageError(ValueError):
    """The store in LABELER_STORAGE_URL cannot be used; the message says what to check."""


# An unreachable endpoint fails within seconds instead of botocore's default of retrying with
# back-off; a missing key is looked up by a HEAD, never answered from a stale listing.
_S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}},
    "use_listings_cache": False,
}


@dataclass(frozen=True)
class Store:
    fs: Any  # fsspec.AbstractFileSystem
    root: str
    url: str

    def path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key.lstrip('/')}"

    def exists(self, key: str) -> bool:
        with self._reaching():
            return bool(self.fs.exists(self.path(key)))

    def put(self, local: str | Path, key: str) -> None:
        self.put_many([local], [key])

    def put_many(self, locals_: Sequence[str | Path], keys: Sequence[str]) -> None:
        """Upload files; asynchronous filesystems (s3fs) send them concurrently."""
        if not keys:
            return
        with self._reaching():
            self.fs.put([str(p) for p in locals_], [self.path(k) for k in keys])

    def get(self, key: str, local: str | Path) -> bool:
        """Download `key` to `local` (atomically: readers never see half a file); False when the
        store has no such key."""
        local = Path(local)
        if not self.exists(key):
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f"{local.name}.{uuid.uuid4().hex}.part")
        try:
            with self._reaching():
                self.fs.get_file(self.path(key), str(partial))
            os.replace(partial, local)
        finally:
            partial.unlink(missing_ok=True)
        return True

    def names(self, prefix: str) -> list[str]:
        """The names of the entries right below `prefix` (files and folders); [] when it is absent."""
        with self._reaching():
            if not self.fs.exists(self.path(prefix)):
                return []
            return sorted(
                str(entry).rstrip("/").rsplit("/", 1)[-1]
                for entry in self.fs.ls(self.path(prefix), detail=False)
            )

    def remove(self, prefix: str) -> None:
        """Delete `prefix` and everything below it; nothing when it is absent."""
        with self._reaching():
            if self.fs.exists(self.path(prefix)):
                self.fs.rm(self.path(prefix), recursive=True)

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except Exception as error:  # botocore, aiohttp and OS errors alike
            raise StorageError(
                f"Cannot use the store in LABELER_STORAGE_URL={self.url} ({_first_line(error)}); check that it "
                "runs and is reachable, that the bucket exists and that the credentials (or LABELER_STORAGE_OPTIONS) "
                "are right."
            ) from error


def store() -> Store | None:
    """The store named by LABELER_STORAGE_URL, or None when it is unset. Raises StorageError
    for a URL no installed filesystem can open."""
    url = storage_url()
    if url is None:
        return None
    import fsspec

    try:
        options = storage_options()
    except SettingError as error:
        raise StorageError(str(error)) from None
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in ("s3", "s3a"):
        options = {**_S3_DEFAULTS, **options}
    elif protocol in ("file", "local"):
        options = {"auto_mkdir": True, **options}
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except Exception as error:  # noqa: BLE001 - unknown protocol, missing package, bad options
        raise StorageError(
            f"LABELER_STORAGE_URL={url} is not a store this installation can open ({_first_line(error)}); set it "
            "like s3://bucket/prefix (with s3fs installed), or unset it to keep files in the data folder only."
        ) from None
    if not root.strip("/"):
        raise StorageError(
            f"LABELER_STORAGE_URL={url} names no bucket or folder; set it like s3://bucket/prefix."
        )
    return Store(fs=fs, root=root, url=url)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
