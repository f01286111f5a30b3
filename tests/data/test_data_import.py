"""Folder and zip import: layouts, every skip reason, odd names and zip attacks."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeler.data import DataError, read_source
from labeler.data.importer import extract_zip, import_folder, import_zip


def png(value: int = 0, mode: str = "L", size: tuple[int, int] = (10, 10), seed: int | None = None) -> bytes:
    if seed is not None:  # distinct bytes, so the duplicate check does not fire
        rng = np.random.default_rng(seed)
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    else:
        img = Image.new(mode, size, value if mode == "L" else (value, 0, 0))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def reasons(images) -> dict[str, str]:
    return dict(images.skipped)


def all_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---- folder layouts


def test_class_subfolders(tmp_path):
    for i in range(3):
        write(tmp_path / "dog" / f"{i}.png", png(seed=i))
        write(tmp_path / "cat" / f"{i}.png", png(seed=10 + i))
    data = import_folder(tmp_path)
    assert data.classes == ["cat", "dog"]
    assert data.pixels.shape == (6, 1, 28, 28)  # all gray -> 1 channel, 28 px
    assert data.keys[0] == "cat/0.png"
    assert data.truth.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.splits == ["pool"] * 6
    assert all(Path(f).is_file() and Path(f).is_absolute() for f in data.files)
    assert data.skipped == []


def test_colour_images_give_three_channels_and_32_pixels(tmp_path):
    write(tmp_path / "a" / "1.png", png(seed=1))
    write(tmp_path / "b" / "2.jpg", jpeg(2))
    data = import_folder(tmp_path)
    assert data.pixels.shape == (2, 3, 32, 32)
    assert import_folder(tmp_path, image_size=20).shape == (3, 20, 20)


def test_wrapper_folders_are_looked_through_and_deeper_levels_use_the_first(tmp_path):
    write(tmp_path / "photos" / "cat" / "x" / "y" / "1.png", png(seed=1))
    write(tmp_path / "photos" / "dog" / "2.png", png(seed=2))
    write(tmp_path / ".DS_Store", b"junk")
    write(tmp_path / "__MACOSX" / "photos" / "._2.png", b"junk")
    data = import_folder(tmp_path)
    assert data.keys == ["cat/x/y/1.png", "dog/2.png"]
    assert data.classes == ["cat", "dog"] and data.truth.tolist() == [0, 1]
    assert reasons(data) == {".DS_Store": "hidden file", "__MACOSX/": "hidden folder or macOS metadata"}
    # The Project page's report counts the refused folder as a folder (it said "2 files").
    from labeler.ui.project import skipped_words

    assert (
        skipped_words([shown for shown, _ in data.skipped])
        == "1 file and 1 folder were skipped when importing."
    )


def test_flat_folder_has_no_classes_unless_given(tmp_path):
    for i in range(3):
        write(tmp_path / f"{i}.png", png(seed=i))
    write(tmp_path / "sub" / "3.png", png(seed=3))  # an image at the top makes it flat
    data = import_folder(tmp_path)
    assert data.classes == [] and data.truth.tolist() == [-1] * 4
    assert "sub/3.png" in data.keys
    named = import_folder(tmp_path, classes=["yes", "no"])
    assert named.classes == ["yes", "no"] and named.truth.tolist() == [-1] * 4


def test_given_classes_fix_the_order_and_must_cover_the_folders(tmp_path):
    write(tmp_path / "a" / "1.png", png(seed=1))
    write(tmp_path / "b" / "2.png", png(seed=2))
    data = import_folder(tmp_path, classes=["b", "a", "c"])
    assert data.classes == ["b", "a", "c"] and data.truth.tolist() == [1, 0]
    with pytest.raises(DataError, match="not among the given classes"):
        import_folder(tmp_path, classes=["a"])
    with pytest.raises(DataError, match="different"):
        import_folder(tmp_path, classes=["a", "a"])


def test_progress_reports_every_image(tmp_path):
    for i in range(4):
        write(tmp_path / f"{i}.png", png(seed=i))
    calls = []
    import_folder(tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]


# ---- skip reasons


def test_every_skip_reason(tmp_path):
    root = tmp_path / "in"
    write(root / "ok.png", png(seed=0))
    write(root / "notes.txt", b"hello")
    write(root / "empty.png", b"")
    good = png(seed=1, size=(64, 64))
    write(root / "truncated.png", good[: len(good) // 2])
    write(root / "big.png", png(seed=2, size=(300, 300)))
    write(root / "lie.png", jpeg(3))
    write(root / "text.jpg", b"not a picture at all")
    write(root / "z_copy.png", png(seed=0))
    write(tmp_path / "outside.png", png(seed=4))
    os.symlink(tmp_path / "outside.png", root / "link.png")
    (tmp_path / "outside_dir").mkdir()
    write(tmp_path / "outside_dir" / "5.png", png(seed=5))
    os.symlink(tmp_path / "outside_dir", root / "linked_dir")
    os.mkfifo(root / "pipe.png")
    data = import_folder(root, max_pixels=200 * 200)
    assert data.keys == ["ok.png"]
    got = reasons(data)
    assert got["notes.txt"] == "not an image file (extension .txt)"
    assert got["empty.png"] == "empty file"
    assert got["truncated.png"].startswith("truncated or corrupt image")
    assert "decompression bomb" in got["big.png"]
    assert got["lie.png"] == "content is JPEG but the extension is .png"
    assert got["text.jpg"].startswith("not an image")
    assert got["z_copy.png"] == "duplicate of ok.png"
    assert got["link.png"] == "symbolic link" and got["linked_dir/"] == "symbolic link"
    assert got["pipe.png"] == "not a regular file"
    assert len(data.skipped) == 10


def test_a_copy_in_another_class_folder_says_it_is_kept_in_the_first(tmp_path):
    write(tmp_path / "cat" / "a.png", png(seed=0))
    write(tmp_path / "cat" / "b.png", png(seed=0))
    write(tmp_path / "dog" / "c.png", png(seed=0))
    write(tmp_path / "dog" / "d.png", png(seed=1))
    data = import_folder(tmp_path)
    assert data.keys == ["cat/a.png", "dog/d.png"]
    got = reasons(data)
    assert got["cat/b.png"] == "duplicate of cat/a.png"
    assert got["dog/c.png"] == "duplicate of cat/a.png, in another folder; kept there only"


def test_file_size_limit(tmp_path):
    write(tmp_path / "a.png", png(seed=0))
    write(tmp_path / "b.png", png(seed=1, size=(100, 100)))
    data = import_folder(tmp_path, max_file_bytes=len(png(seed=0)))
    assert reasons(data)["b.png"].startswith("file too large")


def test_odd_names_work(tmp_path):
    names = ["café ☕.png", "with space.png", 'quote\'s "x".png', "new\nline.png", "UPPER.PNG"]
    for i, name in enumerate(names):
        write(tmp_path / "klasse ü" / name, png(seed=i))
    write(tmp_path / "other" / "0.png", png(seed=99))
    os.close(os.open(os.path.join(os.fsencode(tmp_path / "other"), b"bad\xff.png"), os.O_CREAT | os.O_WRONLY))
    data = import_folder(tmp_path)
    assert sorted(data.keys) == sorted([f"klasse ü/{n}" for n in names] + ["other/0.png"])
    assert data.classes == ["klasse ü", "other"]
    assert list(reasons(data).values()) == ["file name is not valid UTF-8"]
    for path, reason in data.skipped:
        path.encode("utf-8")  # storable in the database


def test_nothing_to_import(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        import_folder(tmp_path / "missing")
    # A file given as the folder was said not to exist (exploratory session).
    write(tmp_path / "one.png", png(seed=1))
    with pytest.raises(DataError, match=r"one.png is a file, not a folder; give the folder that holds"):
        import_folder(tmp_path / "one.png")
    with zipfile.ZipFile(tmp_path / "all.zip", "w") as archive:
        archive.writestr("a/1.png", png(seed=1))
    with pytest.raises(DataError, match=r"all.zip is a zip file, not a folder; import it as a zip\."):
        import_folder(tmp_path / "all.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        import_folder(tmp_path / "empty")
    write(tmp_path / "texts" / "a.txt", b"x")
    with pytest.raises(DataError, match=r"a.txt: not an image file \(extension .txt\)"):
        import_folder(tmp_path / "texts")


def test_read_source_forms(tmp_path):
    write(tmp_path / "imgs" / "a" / "1.png", png(seed=1))
    write(tmp_path / "imgs" / "b" / "2.png", png(seed=2))
    for source in (f"folder:{tmp_path / 'imgs'}", str(tmp_path / "imgs")):
        assert read_source(source).classes == ["a", "b"]
    with pytest.raises(DataError, match="does not exist"):
        read_source(f"folder:{tmp_path / 'nope'}")


# ---- zip


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def mark_encrypted(path: Path, name: str) -> None:
    """Set the 'encrypted' flag of entry `name` (zipfile cannot write encrypted zips)."""
    raw, target = bytearray(path.read_bytes()), name.encode()
    for signature, name_length_at, name_at, flags_at in (
        (b"PK\x03\x04", 26, 30, 6),
        (b"PK\x01\x02", 28, 46, 8),
    ):
        pos = raw.find(signature)
        while pos >= 0:
            length = int.from_bytes(raw[pos + name_length_at : pos + name_length_at + 2], "little")
            if raw[pos + name_at : pos + name_at + length] == target:
                raw[pos + flags_at] |= 0x1
            pos = raw.find(signature, pos + 4)
    path.write_bytes(bytes(raw))


def test_zip_import_with_classes_and_wrapper(tmp_path):
    archive = make_zip(
        tmp_path / "upload.zip",
        [
            ("data/", b""),
            ("data/cat/1.png", png(seed=1)),
            ("data/dog/2.png", png(seed=2)),
            ("data/dog/readme.txt", b"hi"),
            ("__MACOSX/data/._1.png", b"junk"),
            ("__MACOSX/data/._2.png", b"junk"),
            ("data/cat/.thumbs/1.png", png(seed=3)),
            ("data/cat/.thumbs/2.png", png(seed=4)),
            ("data/dog/.DS_Store", b"junk"),
        ],
    )
    target = tmp_path / "target"
    data = import_zip(archive, target=target)
    assert data.keys == ["cat/1.png", "dog/2.png"] and data.classes == ["cat", "dog"]
    assert all(Path(f).is_relative_to(target) and Path(f).is_file() for f in data.files)
    # A hidden folder is one row, "folder/", as a folder import lists it (it was file by file).
    assert data.skipped == [
        ("data/dog/readme.txt", "not an image file (extension .txt)"),
        ("__MACOSX/", "hidden folder or macOS metadata"),
        ("data/cat/.thumbs/", "hidden folder or macOS metadata"),
        ("data/dog/.DS_Store", "hidden file"),
    ]
    assert all_files(target) == {"data", "data/cat", "data/cat/1.png", "data/dog", "data/dog/2.png"}


def test_a_zips_class_folder_with_no_image_is_named_in_the_report(tmp_path):
    """Its folder entry, or a folder of non-images, was never made on disk, so the folder import
    behind a zip could not see it: an empty class folder vanished without a note."""
    from labeler.data.importer import NOT_A_CLASS

    archive = make_zip(
        tmp_path / "upload.zip",
        [
            ("photos/cat/1.png", png(seed=1)),
            ("photos/dog/2.png", png(seed=2)),
            ("photos/empty/", b""),
            ("photos/junk/readme.txt", b"hi"),
            ("photos/.hidden/", b""),
            ("../outside/", b""),
        ],
    )
    target = tmp_path / "target"
    data = import_zip(archive, target=target)
    assert data.classes == ["cat", "dog"]
    assert reasons(data)["photos/empty/"] == reasons(data)["photos/junk/"] == NOT_A_CLASS
    assert "photos/.hidden/" not in reasons(data) and not (tmp_path / "outside").exists()


def test_zip_default_target_is_under_the_data_folder(tmp_path):
    archive = make_zip(tmp_path / "my set.zip", [("a/1.png", png(seed=1)), ("b/2.png", png(seed=2))])
    data = read_source(f"zip:{archive}")
    imports = Path(os.environ["LABELER_DATA_DIR"]) / "imports"
    (folder,) = list(imports.iterdir())
    assert folder.name.startswith("my_set-")
    assert all(Path(f).is_relative_to(folder) for f in data.files)
    assert read_source(str(archive)).classes == ["a", "b"]  # a plain .zip path works too


def test_zip_slip_symlinks_and_encryption_are_refused(tmp_path):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    archive = make_zip(
        sandbox / "evil.zip",
        [
            ("ok.png", png(seed=1)),
            ("../evil.png", png(seed=2)),
            ("a/../../evil2.png", png(seed=3)),
            ("/abs.png", png(seed=4)),
            ("C:\\windows\\drive.png", png(seed=5)),
            ("..\\backslash.png", png(seed=6)),
            (symlink_entry("link.png"), b"../../outside.png"),
            ("secret.png", png(seed=7)),
        ],
    )
    mark_encrypted(archive, "secret.png")
    target = sandbox / "target"
    skipped = dict(extract_zip(archive, target))
    assert skipped == {
        "../evil.png": "path leaves the zip's folder (..)",
        "a/../../evil2.png": "path leaves the zip's folder (..)",
        "/abs.png": "absolute path in zip",
        "C:\\windows\\drive.png": "absolute path in zip",
        "..\\backslash.png": "path leaves the zip's folder (..)",
        "link.png": "symbolic link",
        "secret.png": "encrypted (password-protected) entry",
    }
    assert all_files(target) == {"ok.png"}
    assert all_files(sandbox) == {"evil.zip", "target", "target/ok.png"}
    assert not Path("/abs.png").exists()


def test_zip_bombs_are_refused_whole(tmp_path):
    entries = [(f"{i}.png", png(seed=i)) for i in range(5)]
    archive = make_zip(tmp_path / "many.zip", entries)
    with pytest.raises(DataError, match="5 entries, more than the limit of 4"):
        import_zip(archive, target=tmp_path / "t1", max_entries=4)
    with pytest.raises(DataError, match="would unpack to"):
        import_zip(archive, target=tmp_path / "t2", max_total_bytes=100)
    assert not (tmp_path / "t1").exists() and not (tmp_path / "t2").exists()


def test_suspicious_compression_ratio_is_skipped(tmp_path):
    archive = make_zip(tmp_path / "ratio.zip", [("zeros.bmp", bytes(3 * 2**20)), ("ok.png", png(seed=1))])
    data = import_zip(archive, target=tmp_path / "t", max_ratio=100)
    assert data.keys == ["ok.png"]
    assert "suspicious compression ratio" in reasons(data)["zeros.bmp"]
    assert not (tmp_path / "t" / "zeros.bmp").exists()


def test_duplicate_entries_in_zip(tmp_path):
    path = tmp_path / "dup.zip"
    with pytest.warns(UserWarning, match="Duplicate name"):
        make_zip(path, [("a.png", png(seed=1)), ("a.png", png(seed=2)), ("b.png", png(seed=3))])
    data = import_zip(path, target=tmp_path / "t")
    assert data.keys == ["a.png", "b.png"]
    assert reasons(data) == {"a.png": "duplicate entry in zip"}


def test_corrupt_zip(tmp_path):
    bad = write(tmp_path / "bad.zip", b"this is not a zip file")
    with pytest.raises(DataError, match="not a readable zip file"):
        import_zip(bad, target=tmp_path / "t")
    good = make_zip(tmp_path / "good.zip", [("a.png", png(seed=1))]).read_bytes()
    cut = write(tmp_path / "cut.zip", good[: len(good) - 30])
    with pytest.raises(DataError, match="not a readable zip file"):
        import_zip(cut, target=tmp_path / "t")
    with pytest.raises(DataError, match="does not exist"):
        import_zip(tmp_path / "missing.zip", target=tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_corrupt_entry_is_skipped(tmp_path):
    path = make_zip(tmp_path / "crc.zip", [("a.png", png(seed=1)), ("b.png", png(seed=2))])
    raw = bytearray(path.read_bytes())
    first = raw.find(b"a.png") + len("a.png")  # the local header's name, then a's data
    raw[first + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    data = import_zip(path, target=tmp_path / "t")
    assert data.keys == ["b.png"]
    assert reasons(data)["a.png"].startswith("corrupt zip entry")


def test_zip_target_must_be_empty(tmp_path):
    archive = make_zip(tmp_path / "a.zip", [("a.png", png(seed=1))])
    write(tmp_path / "t" / "old.txt", b"keep me")
    with pytest.raises(DataError, match="not empty"):
        import_zip(archive, target=tmp_path / "t")
    assert (tmp_path / "t" / "old.txt").read_bytes() == b"keep me"


def test_zip_without_images(tmp_path):
    archive = make_zip(tmp_path / "a.zip", [("a.txt", b"x")])
    with pytest.raises(DataError, match=r"No image in .*a.zip"):
        import_zip(archive, target=tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_zip_names_written_as_utf8_without_the_flag_keep_their_letters(tmp_path):
    """macOS's Archive Utility and older Windows zips write UTF-8 names without the zip's UTF-8
    flag; read as CP437 (the standard's default), "Käse" became the class "K├ñse". A name whose
    bytes are not UTF-8 is still read as CP437 ("caf\\x82" is "café" there)."""
    path = make_zip(
        tmp_path / "upload.zip",
        [("KXXse/1.png", png(seed=1)), ("cafX/2.png", png(seed=2)), ("plain/3.png", png(seed=3))],
    )
    raw = path.read_bytes()
    assert raw.count(b"KXXse") == 2 and raw.count(b"cafX") == 2  # the local and the central header
    path.write_bytes(raw.replace(b"KXXse", "Käse".encode()).replace(b"cafX", b"caf\x82"))
    with zipfile.ZipFile(path) as archive:
        assert not any(info.flag_bits & 0x800 for info in archive.infolist())
    data = import_zip(path, target=tmp_path / "target")
    assert data.classes == ["Käse", "café", "plain"]
    assert sorted(data.keys) == ["Käse/1.png", "café/2.png", "plain/3.png"]


def test_a_zip_of_too_many_entries_is_refused_before_its_directory_is_read(tmp_path, monkeypatch):
    """Python's zipfile keeps about 500 bytes per entry of the directory it parses (86 in the
    file): a 200 MB upload of minimal entries took over a gigabyte before the count was checked.
    The end record's count is read first; a count that lies is caught by the directory's size."""
    from labeler.data import importer

    archive = make_zip(tmp_path / "many.zip", [(f"{i}.png", b"") for i in range(50)])

    def parse(*args, **kwargs):
        raise AssertionError("the directory was parsed")

    monkeypatch.setattr(importer.zipfile, "ZipFile", parse)
    with pytest.raises(DataError, match="many.zip has 50 entries, more than the limit of 40"):
        import_zip(archive, target=tmp_path / "t1", max_entries=40)
    raw = bytearray(archive.read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    raw[end + 8 : end + 12] = (1).to_bytes(2, "little") * 2  # it says 1 entry
    trailing = tmp_path / "trailing.zip"  # bytes after the end record, which zipfile accepts
    trailing.write_bytes(archive.read_bytes() + b"\0")
    with pytest.raises(DataError, match="trailing.zip has 50 entries, more than the limit of 40"):
        import_zip(trailing, target=tmp_path / "t3", max_entries=40)
    lying = tmp_path / "lying.zip"
    lying.write_bytes(bytes(raw))
    with pytest.raises(
        DataError, match=r"lying.zip's list of entries takes [\d,]+ bytes, more than 4 entries need"
    ):
        import_zip(lying, target=tmp_path / "t2", max_entries=4)
    assert not (tmp_path / "t1").exists() and not (tmp_path / "t2").exists()


def test_the_entry_count_of_a_zip64_directory_is_read_too(tmp_path):
    from labeler.data.importer import _zip_directory

    path = tmp_path / "z64.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(3):
            with archive.open(f"{i}.png", "w", force_zip64=True) as entry:
                entry.write(b"x")
    small = _zip_directory(path)
    assert small is not None and small[0] == 3
    raw = bytearray(path.read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    raw[end + 8 : end + 12] = b"\xff\xff\xff\xff"  # counts kept in the zip64 record only
    raw[end + 12 : end + 16] = b"\xff\xff\xff\xff"
    zip64_end = raw.rfind(b"PK\x06\x06")
    if zip64_end < 0:  # Python writes one only when it must: add one, with its locator
        record = (
            b"PK\x06\x06"
            + (44).to_bytes(8, "little")
            + b"\x2d\x00\x2d\x00"
            + bytes(8)
            + (3).to_bytes(8, "little") * 2
            + small[1].to_bytes(8, "little")
            + int.from_bytes(raw[end + 16 : end + 20], "little").to_bytes(8, "little")
        )
        locator = b"PK\x06\x07" + bytes(4) + end.to_bytes(8, "little") + (1).to_bytes(4, "little")
        raw[end:end] = record + locator
    path.write_bytes(bytes(raw))
    assert _zip_directory(path) == (3, small[1])
    prefixed = tmp_path / "sfx.zip"  # a launcher before the archive: offsets count from the zip
    prefixed.write_bytes(b"#!/bin/sh\nexit 0\n" * 8 + bytes(raw))
    assert _zip_directory(prefixed) == (3, small[1])


def test_a_zip_comment_that_looks_like_an_end_record_is_not_read_as_one(tmp_path):
    from labeler.data.importer import _zip_directory

    path = tmp_path / "comment.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.png", png(seed=1))
        archive.comment = b"PK\x05\x06" + b"\xff" * 18  # 65535 entries, if read as the record
    assert _zip_directory(path)[0] == 1  # (Python's zipfile itself misreads this one)
