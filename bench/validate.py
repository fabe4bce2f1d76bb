"""Benchmark: `validate_dataset` on a synthetic 10,000-item dataset (or any dataset root).

    .venv/bin/python bench/validate.py [--persons 10000] [--workers 8] [--out DIR] [--link]
    .venv/bin/python bench/validate.py --url s3://bucket/vitonhd [--workers 8,32] [--storage-option KEY=VALUE]

Without --url it writes a valid HR-VITON-layout dataset of N persons and N cloths under `test/`
(every file realistic in size and format: one 768x1024 set encoded once, from the sample photos where
present, then copied under N names), puts in a handful of known mistakes, and times the validation
once per --workers value. Prints one table row per run: items (persons + cloths), files read, wall
seconds, CPU seconds (all threads: the cost on a machine shared with other work), items/s, MB/s read and
the problems found by code. Not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

from flows.cli.common import parse_storage_option  # noqa: E402
from tasks.infra.store import Store  # noqa: E402
from tasks.tools.validate import validate_dataset  # noqa: E402
from vitonhd_models import contract  # noqa: E402
from vitonhd_models.contract import IMAGE_HEIGHT as H  # noqa: E402
from vitonhd_models.contract import IMAGE_WIDTH as W  # noqa: E402
from vitonhd_models.contract import Cihp  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples" / "vitonhd"
SPLIT = "test"

# ---------------------------------------------------------------------------------------------------
# One valid set of files, encoded once
# ---------------------------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo(folder: str, fallback: tuple[int, int, int]) -> Image.Image:
    paths = sorted((SAMPLES / folder).glob("*.jpg")) if SAMPLES.is_dir() else []
    if paths:
        return Image.open(paths[0]).convert("RGB").resize((W, H))
    noise = np.random.default_rng(0).integers(0, 40, (H, W, 3), dtype=np.uint8)
    return Image.fromarray(np.clip(noise.astype(int) + fallback, 0, 255).astype(np.uint8))


def _person_labels() -> np.ndarray:
    """A smooth, person-shaped CIHP map (ellipses, blurred edges), like the released parse maps."""
    layers = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(layers)
    draw.ellipse((290, 30, 480, 200), fill=Cihp.HAIR)
    draw.ellipse((315, 90, 455, 270), fill=Cihp.FACE)
    draw.rectangle((355, 250, 415, 310), fill=Cihp.TORSO_SKIN)
    draw.polygon([(250, 300), (520, 300), (560, 640), (210, 640)], fill=Cihp.UPPER_CLOTHES)
    draw.polygon([(520, 310), (580, 330), (640, 620), (590, 630)], fill=Cihp.LEFT_ARM)
    draw.polygon([(250, 310), (190, 330), (130, 620), (180, 630)], fill=Cihp.RIGHT_ARM)
    draw.polygon([(230, 640), (540, 640), (520, 1024), (250, 1024)], fill=Cihp.PANTS)
    return np.asarray(layers.filter(ImageFilter.ModeFilter(9)))


def _parse_png(labels: np.ndarray) -> bytes:
    image = Image.fromarray(labels, mode="L").convert("P")
    image.putpalette(contract.cihp_palette_flat())
    return _encode(image, "PNG")


def _pose_json(rng: np.random.Generator) -> bytes:
    keypoints = np.zeros((25, 3))
    points = {0: (384, 190), 1: (384, 290), 2: (280, 320), 3: (200, 450), 4: (200, 590), 5: (488, 320),
              6: (568, 450), 7: (568, 590), 8: (384, 620), 9: (330, 620), 10: (330, 800), 11: (330, 960),
              12: (438, 620), 13: (438, 800), 14: (438, 960), 15: (360, 170), 16: (408, 170), 17: (340, 180),
              18: (428, 180)}  # fmt: skip
    for joint, (x, y) in points.items():
        keypoints[joint] = (x + rng.uniform(-2, 2), y + rng.uniform(-2, 2), rng.uniform(0.6, 0.95))
    hand = [round(float(v), 6) for v in rng.uniform(0, 700, 63)]  # OpenPose ran with --hand (contract §1.5)
    person = {
        "person_id": [-1],
        "pose_keypoints_2d": [round(float(v), 6) for v in keypoints.reshape(-1)],
        "face_keypoints_2d": [],
        "hand_left_keypoints_2d": hand,
        "hand_right_keypoints_2d": hand,
        "pose_keypoints_3d": [],
        "face_keypoints_3d": [],
        "hand_left_keypoints_3d": [],
        "hand_right_keypoints_3d": [],
    }
    return json.dumps({"version": 1.3, "people": [person]}).encode()


def valid_files() -> dict[str, bytes]:
    person = _photo("image", (180, 160, 150))
    cloth = _photo("cloth", (230, 230, 230))
    labels = _person_labels()
    agnostic_labels = labels.copy()
    agnostic_labels[np.isin(agnostic_labels, (5, 6, 7, 10))] = 0
    agnostic = person.copy()
    ImageDraw.Draw(agnostic).polygon([(250, 290), (520, 290), (560, 640), (210, 640)], fill=(128, 128, 128))
    skeleton = Image.new("RGB", (W, H))
    ImageDraw.Draw(skeleton).line([(384, 190), (384, 290), (280, 320), (200, 450), (200, 590)], (255, 85, 0), 8)
    ImageDraw.Draw(skeleton).line([(384, 290), (384, 620), (330, 620), (330, 960)], (0, 255, 85), 8)
    grey = np.asarray(cloth.convert("L"))
    mask = Image.fromarray(np.where(grey < 235, 255, 0).astype(np.uint8)).filter(ImageFilter.MedianFilter(5))
    return {
        "image": _encode(person, "JPEG", quality=95),
        "cloth": _encode(cloth, "JPEG", quality=95),
        "cloth_mask": _encode(mask, "JPEG", quality=95),
        "parse": _parse_png(labels),
        "parse_agnostic": _parse_png(agnostic_labels),
        "agnostic": _encode(agnostic, "JPEG", quality=95),
        "pose_json": _pose_json(np.random.default_rng(0)),
        "pose_img": _encode(skeleton, "PNG"),
    }


# ---------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------


def stem(index: int) -> str:
    return f"{index:05d}_00"


def write_dataset(root: Path, persons: int, cloths: int, link: bool) -> dict[str, int]:
    """N persons and M cloths under root/test/, a test_pairs.txt; returns the injected mistakes by code."""
    files = valid_files()
    base = root / SPLIT
    folders = {
        "image": contract.DIR_IMAGE,
        "parse": contract.DIR_PARSE,
        "parse_agnostic": contract.DIR_PARSE_AGNOSTIC,
        "agnostic": contract.DIR_AGNOSTIC,
        "pose_json": contract.DIR_POSE_JSON,
        "pose_img": contract.DIR_POSE_IMG,
        "cloth": contract.DIR_CLOTH,
        "cloth_mask": contract.DIR_CLOTH_MASK,
    }
    names = {
        "image": contract.person_image_name,
        "parse": contract.parse_name,
        "parse_agnostic": contract.parse_agnostic_name,
        "agnostic": contract.agnostic_name,
        "pose_json": contract.keypoints_json_name,
        "pose_img": contract.rendered_pose_name,
        "cloth": contract.cloth_image_name,
        "cloth_mask": contract.cloth_mask_name,
    }
    originals = {}
    for kind, folder in folders.items():
        (base / folder).mkdir(parents=True, exist_ok=True)
        originals[kind] = base / folder / f".original{Path(names[kind]('x')).suffix}"
        originals[kind].write_bytes(files[kind])

    def place(kind: str, index: int) -> None:
        target = base / folders[kind] / names[kind](stem(index))
        if link:
            os.link(originals[kind], target)
        else:
            target.write_bytes(files[kind])

    for index in range(persons):
        for kind in ("image", "parse", "parse_agnostic", "agnostic", "pose_json", "pose_img"):
            place(kind, index)
    for index in range(cloths):
        place("cloth", index)
        place("cloth_mask", index)
    lines = [f"{stem(i)}.jpg {stem((i + 1) % cloths)}.jpg\n" for i in range(persons)]

    # The mistakes, one of each kind, spread over the dataset.
    mistakes = {}

    def spoil(kind: str, index: int, data: bytes | None, code: str) -> None:
        target = base / folders[kind] / names[kind](stem(index))
        target.unlink()
        if data is not None:
            target.write_bytes(data)
        mistakes[code] = mistakes.get(code, 0) + 1

    palette = np.array(contract.CIHP_PALETTE, dtype=np.uint8)
    spoil("parse", persons // 7, _encode(Image.fromarray(palette[_person_labels()]), "PNG"), "parse_rgb")
    coco = json.loads(files["pose_json"])
    coco["people"][0]["pose_keypoints_2d"] = coco["people"][0]["pose_keypoints_2d"][:54]
    spoil("pose_json", persons // 3, json.dumps(coco).encode(), "pose_coco18")
    spoil("image", persons // 2, _encode(Image.new("RGB", (600, 800)), "JPEG"), "image_size")
    spoil("cloth_mask", cloths // 5, None, "missing_file")
    grey = _encode(Image.open(io.BytesIO(files["cloth"])).convert("L"), "JPEG", quality=95)
    spoil("cloth_mask", cloths // 4, grey, "cloth_mask_not_binary")
    lines[persons // 9] = f"{stem(persons // 9)}.jpg {stem(cloths + 1)}.jpg\n"
    mistakes["pairs_missing_file"] = 1
    (root / contract.pairs_file_name(SPLIT)).write_text("".join(lines))
    for original in originals.values():
        original.unlink()
    return mistakes


def folder_bytes(root: Path) -> int:
    return sum(entry.stat().st_size for entry in root.rglob("*") if entry.is_file())


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=10_000, help="persons to generate (default 10000)")
    parser.add_argument("--cloths", type=int, default=None, help="cloths to generate (default: as many as persons)")
    parser.add_argument("--workers", default="8", help="comma-separated thread counts, one run each (default 8)")
    parser.add_argument("--out", default=None, help="where to write the dataset (kept); default a temporary folder")
    parser.add_argument("--link", action="store_true", help="hard-link the copies instead of writing them")
    parser.add_argument("--url", default=None, help="validate this existing dataset root instead of generating one")
    parser.add_argument("--storage-option", action="append", type=parse_storage_option, default=[])
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    temporary = None
    expected: dict[str, int] = {}
    if args.url:
        url, size_mb = args.url, None
    else:
        if args.out:
            root = Path(args.out)
            if root.exists():
                shutil.rmtree(root)
        else:
            temporary = tempfile.mkdtemp(prefix="vitonprep-bench-validate-")
            root = Path(temporary) / "dataset"
        cloths = args.cloths or args.persons
        started = time.perf_counter()
        expected = write_dataset(root, args.persons, cloths, args.link)
        size_mb = folder_bytes(root) / 1e6
        print(
            f"generated {args.persons} persons + {cloths} cloths ({size_mb:.0f} MB"
            f"{', hard links' if args.link else ''}) in {time.perf_counter() - started:.1f} s under {root}"
        )
        print(f"injected mistakes: {expected}")
        url = str(root)

    try:
        print(f"\ncores: {os.cpu_count()}")
        header = (
            f"{'workers':>7} {'items':>7} {'files':>7} {'seconds':>8} {'cpu s':>7} {'items/s':>8} {'MB/s':>6}"
            "  problems found"
        )
        print(header)
        print("-" * len(header))
        for count in workers:
            store = Store(url, dict(args.storage_option))
            cpu = time.process_time()
            report = validate_dataset(store, workers=count)
            cpu = time.process_time() - cpu
            items = report.counts["persons"] + report.counts["cloths"]
            found = {code: len(group) for code, group in report.by_code().items()}
            rate = f"{size_mb / report.seconds:6.0f}" if size_mb else f"{'-':>6}"
            print(
                f"{count:>7} {items:>7} {report.counts['files']:>7} {report.seconds:>8.1f} {cpu:>7.1f} "
                f"{items / report.seconds:>8.0f} {rate}  {sum(found.values())} {found}"
            )
            if expected and found != expected:
                print(f"  !! expected exactly {expected}")
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
