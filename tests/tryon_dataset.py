"""A tiny real VITON-HD dataset made by our own preprocess flow, for the try-on and training tests.

Eight persons (the four sample photos and their mirror images) and eight garments (likewise), each
person paired with the garment of the same index in pairs.csv, processed into the `train` split.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageOps

from tasks.infra.store import Store
from tasks.stages.registry import PreprocessConfig


def mirrored(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as photo:
        buffer = io.BytesIO()
        ImageOps.mirror(photo.convert("RGB")).save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()


def build_catalog(root: Store, samples_dir) -> list[tuple[str, str]]:
    """persons/, garments/ and pairs.csv; returns the (person stem, garment stem) pairs."""
    persons = sorted((samples_dir / "image").glob("*.jpg"))
    garments = sorted((samples_dir / "cloth").glob("*.jpg"))
    pairs = []
    for person, garment in zip(persons, garments):
        for suffix, transform in (("00", bytes), ("01", mirrored)):
            person_stem = person.stem.replace("_00", f"_{suffix}")
            garment_stem = garment.stem.replace("_00", f"_{suffix}")
            root.write_bytes(f"persons/{person_stem}.jpg", transform(person.read_bytes()))
            root.write_bytes(f"garments/{garment_stem}.jpg", transform(garment.read_bytes()))
            pairs.append((person_stem, garment_stem))
    root.write_text("pairs.csv", "person,garment\n" + "".join(f"{p}.jpg,{g}.jpg\n" for p, g in pairs))
    return pairs


@pytest.fixture(scope="session")
def tryon_dataset(samples_dir, tmp_path_factory, prefect_server) -> Store:
    """The dataset root (`train/` and `train_pairs.txt`), preprocessed once per session."""
    from flows.preprocess import preprocess

    root = tmp_path_factory.mktemp("tryon")
    catalog = Store(str(root / "catalog"))
    build_catalog(catalog, samples_dir)
    out = Store(str(root / "dataset"))
    summary = preprocess(PreprocessConfig(catalog=catalog.url, out=out.url, split="train", shard_size=4))
    assert summary["persons"]["error"] == 0 and summary["garments"]["error"] == 0, summary["failed"]
    return out
