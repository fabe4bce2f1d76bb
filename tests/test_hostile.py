"""A hostile catalog: over forty kinds of bad, odd and dangerous input at once, on local files and on
the S3 server. The run must complete, and an independent reading of the manifest (pyarrow on the
Parquet files, the contract's folder names spelled out here) must find, for every listed key, either
all its outputs or an error row.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.records.config import RunPolicy
from tasks.stages.registry import PreprocessConfig

pytestmark = pytest.mark.slow

PERSON_OUTPUTS = ("image/{}.jpg", "openpose_json/{}_keypoints.json", "openpose_img/{}_rendered.png",
                  "image-parse-v3/{}.png", "image-parse-agnostic-v3.2/{}.png", "agnostic-v3.2/{}.jpg")
GARMENT_OUTPUTS = ("cloth/{}.jpg", "cloth-mask/{}.jpg")
LISTED = (".jpg", ".jpeg", ".png", ".webp")  # what a catalog folder offers, by name


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("L", (16, 16)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def hostile_files(samples: Path) -> dict[str, bytes]:
    """Catalog key -> bytes: every kind of file a catalog may hold (local-only kinds are added apart)."""
    from tasks.records.catalog import stem_for_key

    person = Image.open(samples / "image" / "00034_00.jpg").convert("RGB")
    other = Image.open(samples / "image" / "01992_00.jpg").convert("RGB")
    garment = Image.open(samples / "cloth" / "04469_00.jpg").convert("RGB")
    jpeg = encoded(person, "JPEG", quality=95)
    pair = Image.new("RGB", (1536, 1024), (240, 240, 240))
    pair.paste(person, (0, 0))
    pair.paste(other, (768, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = Image.new("RGBA", (768, 1024), (0, 0, 0, 0))
    rgba.paste(garment.convert("RGBA"), (0, 0))
    noise = np.random.default_rng(0).integers(0, 255, (1024, 768, 3), dtype=np.uint8)
    return {
        # photos that work, in every encoding
        "persons/plain.jpg": jpeg,
        "persons/00035_00.jpg": (samples / "image" / "00035_00.jpg").read_bytes(),
        "persons/cmyk.jpg": encoded(person.convert("CMYK"), "JPEG", quality=95),
        "persons/sideways-exif.jpg": encoded(person.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif),
        "persons/progressive.jpg": encoded(person, "JPEG", progressive=True),
        "persons/as.png": encoded(person, "PNG"),
        "persons/as.webp": encoded(person, "WEBP", quality=90),
        "persons/grey16.png": encoded(Image.fromarray((np.asarray(person.convert("L")).astype(np.uint16) * 257)), "PNG"),
        "persons/palette.png": encoded(person.convert("P"), "PNG"),
        "persons/wide-landscape.jpg": encoded(person.resize((500, 666)).crop((-400, 0, 900, 666)), "JPEG"),
        "persons/trailing-garbage.jpg": jpeg + b"\x00garbage after the end of the image" * 20,
        "persons/really-a-png.jpg": encoded(person, "PNG"),
        "persons/UPPER Case & spaces.JPG": jpeg,
        "persons/ünïcödé-名前.jpg": jpeg,
        "persons/deep/down/the/folders/a.jpeg": jpeg,
        "persons/" + "a" * 236 + ".jpg": jpeg,
        "persons/Model.jpg": jpeg,  # and a file named after its hashed stem:
        f"persons/{stem_for_key('Model.jpg')}.jpg": jpeg,
        "persons/far-passer-by.jpg": encoded(_with(person, other.resize((192, 256)), (560, 700)), "JPEG"),
        # photos that are broken or hold nobody to dress
        "persons/empty.jpg": b"",
        "persons/text.jpg": b"this is a text file, not a photo\n" * 10,
        "persons/html.jpg": b"<!doctype html><html><body>404 not found</body></html>",
        "persons/truncated.jpg": jpeg[: len(jpeg) // 3],
        "persons/header-only.jpg": jpeg[:200],
        "persons/tiny.png": encoded(Image.new("RGB", (8, 8)), "PNG"),
        "persons/bomb.png": png_claiming(30000, 30000),
        "persons/nobody.jpg": encoded(Image.new("RGB", (768, 1024), (90, 140, 200)), "JPEG"),
        "persons/noise.png": encoded(Image.fromarray(noise), "PNG"),
        "persons/head-and-shoulders.jpg": encoded(person.crop((0, 0, 768, 340)), "JPEG"),
        "persons/lying.jpg": encoded(person.rotate(90, expand=True), "JPEG"),
        "persons/upside-down.jpg": encoded(person.rotate(180), "JPEG"),
        "persons/two-people.jpg": encoded(pair, "JPEG"),
        "persons/zeros.webp": b"\x00" * 4096,
        # garments
        "garments/04469_00.jpg": (samples / "cloth" / "04469_00.jpg").read_bytes(),
        "garments/transparent.png": encoded(rgba, "PNG"),
        "garments/small.webp": encoded(garment.resize((300, 400)), "WEBP"),
        "garments/blank.png": encoded(Image.new("RGB", (768, 1024), (255, 255, 255)), "PNG"),
        "garments/full-bleed-noise.png": encoded(Image.fromarray(noise), "PNG"),
        "garments/empty.jpg": b"",
        "garments/truncated.png": encoded(garment, "PNG")[:500],
        # names the listing does not offer at all
        "persons/.hidden.jpg": jpeg,
        "persons/notes.txt": b"not a photo",
        # the pairs file, as a spreadsheet saves it
        "pairs.csv": "\ufeffperson,garment\r\nplain.jpg,04469_00.jpg\r\n\r\n00035_00.jpg,transparent.png\r\n".encode(),
    }


def _with(base: Image.Image, inset: Image.Image, at: tuple[int, int]) -> Image.Image:
    copy = base.copy()
    copy.paste(inset, at)
    return copy


def local_only_kinds(root: Path) -> None:
    """What only a filesystem can hold: FIFOs, devices, sockets, symlinks of every sort, oversized files."""
    persons = root / "persons"
    os.mkfifo(persons / "fifo.jpg")
    os.mknod(persons / "device.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    (persons / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (persons / "loop-a.jpg").symlink_to(persons / "loop-b.jpg")
    (persons / "loop-b.jpg").symlink_to(persons / "loop-a.jpg")
    (persons / "outside.jpg").symlink_to("/etc/hostname")
    (persons / "inside-alias.jpg").symlink_to(persons / "plain.jpg")
    (persons / "big.jpg").write_bytes(b"\xff\xd8" + b"\x00" * 3_000_000)
    (persons / "folder.jpg").mkdir()  # a folder named like a photo: walked into, not read
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(persons / "socket.jpg"))
    listener.close()


def s3_only_kinds() -> dict[str, bytes]:
    """Keys only an object store lists: empty segments and a leading slash."""
    return {"persons//other-bucket/key.jpg": b"x", "persons///x.jpg": b"x", "garments//y.png": b"x"}


def independent_listing(files: dict[str, tuple[int, bool]]) -> dict[tuple[str, str], str]:
    """(kind, key) -> stem for every key the catalog offers, by the listing rules spelled out here."""
    from tasks.records.catalog import stem_for_key

    listed = {}
    for rel in files:
        folder, _, key = rel.partition("/")
        kind = {"persons": "person", "garments": "garment"}.get(folder)
        hidden = any(part.startswith(".") for part in key.split("/") if part)
        if kind and key.lower().endswith(LISTED) and not hidden:
            listed[kind, key] = stem_for_key(key)
    return listed


def latest_rows(tables: list[pa.Table]) -> dict[tuple[str, str, str], dict]:
    """The latest row per (kind, key, stage), by run id: the current view, computed from scratch."""
    latest: dict[tuple[str, str, str], dict] = {}
    for table in tables:
        for row in table.to_pylist():
            slot = (row["kind"], row["key"], row["stage"])
            if slot not in latest or row["run_id"] >= latest[slot]["run_id"]:
                latest[slot] = row
    return latest


def check_every_key(listed: dict, rows: dict, exists) -> list[str]:
    problems = []
    for (kind, key), stem in listed.items():
        mine = [row for (k, name, _), row in rows.items() if (k, name) == (kind, key)]
        outputs = [f"test/{pattern.format(stem)}" for pattern in (PERSON_OUTPUTS if kind == "person" else GARMENT_OUTPUTS)]
        errors = [row for row in mine if row["status"] == "error"]
        if errors:
            if not all(row["error_code"] and row["error_message"] for row in errors):
                problems.append(f"{key}: an error row without a code or a reason")
            if errors[0]["error_code"] != "stem_collision" and any(exists(path) for path in outputs):
                problems.append(f"{key}: failed with {errors[0]['error_code']} but left outputs")
        elif not mine:
            problems.append(f"{key}: no manifest row at all")
        else:
            missing = [path for path in outputs if not exists(path)]
            if missing:
                problems.append(f"{key}: ok, but missing {missing}")
    return problems


def test_a_local_catalog_of_every_hostile_kind_runs_to_the_end(samples_dir, tmp_path, prefect_server):
    from flows.preprocess import preprocess

    root = tmp_path / "catalog"
    files = hostile_files(samples_dir)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    local_only_kinds(root)
    on_disk = {str(path.relative_to(root)): (0, path.is_dir()) for path in root.rglob("*")
               if not path.is_dir() or path.is_symlink()}
    listed = independent_listing(on_disk)
    assert len(listed) >= 40, f"only {len(listed)} kinds"

    out = tmp_path / "dataset"
    state = preprocess(PreprocessConfig(catalog=str(root), out=str(out), max_source_bytes=2_800_000, shard_size=8), policy=RunPolicy(max_failed_fraction=1.0), return_state=True)
    assert state.is_completed(), state.message

    tables = [pq.read_table(path) for path in (out / "manifests" / "test").rglob("*.parquet")]
    problems = check_every_key(listed, latest_rows(tables), lambda rel: (out / rel).exists())
    assert not problems, "\n".join(problems)
    codes = {row["error_code"] for row in latest_rows(tables).values() if row["status"] == "error"}
    assert {"source_not_a_file", "source_missing", "source_unreadable", "outside_root", "source_too_large",
            "stem_collision", "not_an_image", "truncated_image", "decompression_bomb", "image_too_small",
            "empty_file", "no_person", "missing_keypoints", "not_upright", "several_persons", "no_garment"} <= codes
    noise = {key: row["error_code"] for (kind, key, _), row in latest_rows(tables).items()
             if "noise" in key and row["status"] == "error"}
    assert noise == {"noise.png": "no_person", "full-bleed-noise.png": "no_garment"}, noise
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")], "temporary files remain"
    pairs = (out / "test_pairs.txt").read_text().splitlines()
    assert pairs, "the good items still make a dataset"


def test_an_s3_catalog_of_every_hostile_kind_runs_to_the_end(samples_dir, s3, prefect_server):
    from flows.preprocess import preprocess

    files = {**hostile_files(samples_dir), **s3_only_kinds()}
    for rel, data in files.items():
        s3.put(f"catalog/{rel}", data)
    listed = independent_listing({rel: (len(data), False) for rel, data in files.items()})
    listed.update({("person", "/other-bucket/key.jpg"): None, ("person", "//x.jpg"): None,
                   ("garment", "/y.png"): None})
    for key in ("other-bucket/key.jpg", "/x.jpg", "y.png"):  # what the naive rules above made of them
        listed.pop(("person", key), None)
        listed.pop(("garment", key), None)
    assert len(listed) >= 40, f"only {len(listed)} kinds"

    state = preprocess(PreprocessConfig(catalog=s3.url("catalog"), out=s3.url("dataset"), storage_options=s3.storage_options, shard_size=8), policy=RunPolicy(max_failed_fraction=1.0), return_state=True)
    assert state.is_completed(), state.message

    keys = set(s3.keys("dataset/"))
    tables = [pq.read_table(io.BytesIO(s3.get(key))) for key in keys if key.endswith(".parquet")]
    rows = latest_rows(tables)
    for slot, stem in list(listed.items()):
        if stem is None:  # the keys that name other buckets: each must have been refused, never read
            refused = [row for (kind, key, _), row in rows.items() if (kind, key) == slot]
            assert [row["error_code"] for row in refused] == ["unsafe_key"], (slot, refused)
            listed.pop(slot)
    problems = check_every_key(listed, rows, lambda rel: f"dataset/{rel}" in keys)
    assert not problems, "\n".join(problems)
