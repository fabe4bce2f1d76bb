"""Accuracy: our parse, pose, parse-agnostic, DensePose and cloth masks against the VITON-HD dataset's own files.

    .venv/bin/python bench/accuracy.py [--groundtruth ../shared/groundtruth/vitonhd] [--out bench-output/accuracy]
        [--dataset DIR] [--json]

The ground-truth folder is laid out like the released dataset: `image/` and `cloth/` (the photos), and
what the dataset's authors made from them: `image-parse-v3/` (or the first release's `image-parse/`),
`openpose_json/`, `cloth-mask/`, `image-densepose/` (where it has one). The bench copies the photos into a VITON-HD catalog, runs
`vitonprep preprocess` on it as the CLI does (the flow, a temporary Prefect API, the bundled models;
`--dataset` reuses a split folder made before instead), and compares, on the same pixels:

- parse: IoU and pixel accuracy per item, per CIHP label and per 13-group of contract §1.4, and the
  mean IoU over the 7 groups the generator sees most (background, hair, face, upper, bottom, arms);
- parse-agnostic: contract §1.6 applied to their parse and keypoints, against ours as written
  (`image-parse-agnostic-v3.2/`), IoU over the same groups;
- pose: each body joint's distance (0..14) in torso lengths (their neck to their mid-hip), PCK at
  0.05, 0.1 and 0.2 over the joints both sides found, and the joints only one side found;
- DensePose: their render and ours (`image-densepose/`) decoded into part indices the same way (each pixel's
  nearest of the 25 colours, black = no body; the pixels JPEG blended along the parts' edges, near none of
  them, left out), IoU per part, per coarse group (`DENSEPOSE_GROUPS`: front and back, left and right merged)
  and of the body as a whole, and the mean over the groups either side has;
- cloth mask: IoU per garment (theirs thresholded at 128), and the garments we gave no mask.

"Overall" figures pool the pixels of every item (intersection over union of the sums). It writes
`contact_sheet.png` under `--out` (photo | ours | theirs | where they disagree, then our DensePose render and
theirs where the dataset has one) to look at.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.machine import log  # noqa: E402
from vitonhd_models.contract import (  # noqa: E402
    CIHP_TO_GROUP13,
    DENSEPOSE_GROUPS,
    DENSEPOSE_NUM_PARTS,
    MASK_THRESHOLD,
    Body25,
    Cihp,
    DensePosePart,
)

DEFAULT_GROUNDTRUTH = Path(__file__).resolve().parent.parent.parent / "shared" / "groundtruth" / "vitonhd"
GROUP_NAMES = ("background", "hair", "face", "upper", "bottom", "left_arm", "right_arm", "left_leg",
               "right_leg", "left_shoe", "right_shoe", "socks", "noise")
HEADLINE_GROUPS = tuple(range(7))  # background .. right_arm: what the VITON-HD generator sees most
BODY_JOINTS = tuple(range(15))  # BODY_25 0..14: nose to left ankle (no eyes, ears, feet)
PCK_THRESHOLDS = (0.05, 0.1, 0.2)  # in torso lengths
DENSEPOSE_PART_NAMES = tuple(part.name.lower() for part in DensePosePart)  # 0 = background
DENSEPOSE_GROUP_NAMES = ("background", *DENSEPOSE_GROUPS)  # group 0: no body
# A render's pixel counts as its nearest colour's part only within this RGB distance of it: half the smallest
# distance between two of the 25 colours (12.2), so never nearer another. The rest are JPEG's blends along the
# parts' edges (2-3% of the dataset's render; its own colours sit within 4 of 90% of its body pixels): decoded as
# DENSEPOSE_UNSURE and left out of the comparison, else a few blended pixels would make up parts nobody drew.
DENSEPOSE_SURE_DISTANCE = 6.0
DENSEPOSE_UNSURE = 255


# ---- reading ---------------------------------------------------------------------------------


def read_parse(path: Path) -> np.ndarray:
    from vitonhd_models.parse_maps import decode_parse_png

    return decode_parse_png(path.read_bytes(), what=str(path))


def read_keypoints(path: Path) -> np.ndarray | None:
    """(25, 3) BODY_25 of the file's first person, or None when it holds nobody."""
    from vitonhd_models.openpose import keypoints_from_openpose_json

    document = json.loads(path.read_text())
    if not document.get("people"):
        return None
    return keypoints_from_openpose_json(document).reshape(-1, 3)


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    # As the loaders read it (a few released masks were re-saved with 16 grey levels).
    return np.asarray(Image.open(path).convert("L")) >= MASK_THRESHOLD


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def read_densepose(path: Path) -> np.ndarray:
    """A DensePose render (theirs or ours) as (H, W) part indices: each pixel's nearest colour, black = 0, and
    DENSEPOSE_UNSURE where that colour is farther than DENSEPOSE_SURE_DISTANCE."""
    from tasks.stages.densepose import decode_densepose, palette

    rgb = read_rgb(path)
    parts = decode_densepose(rgb)
    error = np.sqrt(((rgb.astype(np.int32) - palette()[parts].astype(np.int32)) ** 2).sum(axis=2))
    parts[error > DENSEPOSE_SURE_DISTANCE] = DENSEPOSE_UNSURE
    return parts


def their_parse_path(root: Path, stem: str) -> Path | None:
    """The dataset's parse of `stem`: v3 where the folder has it, else the first release's."""
    for folder in ("image-parse-v3", "image-parse"):
        path = root / folder / f"{stem}.png"
        if path.is_file():
            return path
    return None


# ---- metrics ---------------------------------------------------------------------------------


def group_map(labels: np.ndarray) -> np.ndarray:
    """CIHP ids -> the 13 groups of contract §1.4."""
    table = np.zeros(256, dtype=np.uint8)
    for group, ids in CIHP_TO_GROUP13.items():
        table[list(ids)] = group
    return table[np.asarray(labels, dtype=np.uint8)]


@dataclass
class Overlap:
    """Pixel counts per class: intersection, ours, theirs (their union is ours + theirs - intersection)."""

    classes: int
    intersection: np.ndarray = field(init=False)
    ours: np.ndarray = field(init=False)
    theirs: np.ndarray = field(init=False)
    agree: int = 0
    pixels: int = 0

    def __post_init__(self) -> None:
        self.intersection = np.zeros(self.classes, dtype=np.int64)
        self.ours = np.zeros(self.classes, dtype=np.int64)
        self.theirs = np.zeros(self.classes, dtype=np.int64)

    def add(self, ours: np.ndarray, theirs: np.ndarray) -> Overlap:
        if ours.shape != theirs.shape:
            raise ValueError(f"maps differ in shape: ours {ours.shape}, theirs {theirs.shape}")
        n = self.classes
        self.intersection += np.bincount(ours[ours == theirs].ravel(), minlength=n)[:n]
        self.ours += np.bincount(ours.ravel(), minlength=n)[:n]
        self.theirs += np.bincount(theirs.ravel(), minlength=n)[:n]
        self.agree += int((ours == theirs).sum())
        self.pixels += ours.size
        return self

    def merge(self, other: Overlap) -> Overlap:
        """Pools another item's counts into these."""
        self.intersection += other.intersection
        self.ours += other.ours
        self.theirs += other.theirs
        self.agree += other.agree
        self.pixels += other.pixels
        return self

    def iou(self) -> np.ndarray:
        """Per class; NaN where neither side has the class."""
        union = self.ours + self.theirs - self.intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, self.intersection / np.maximum(union, 1), np.nan)

    def accuracy(self) -> np.ndarray:
        """Per class: the share of their pixels we label the same; NaN where they have none."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.theirs > 0, self.intersection / np.maximum(self.theirs, 1), np.nan)

    def pixel_accuracy(self) -> float:
        return self.agree / max(self.pixels, 1)

    def mean_iou(self, classes) -> float:
        values = [v for v in self.iou()[list(classes)] if not math.isnan(v)]
        return float(np.mean(values)) if values else float("nan")


def densepose_group_map(parts: np.ndarray) -> np.ndarray:
    """DensePose part indices -> the coarse groups: 0 no body, then DENSEPOSE_GROUPS in order from 1."""
    table = np.zeros(256, dtype=np.uint8)
    for group, ids in enumerate(DENSEPOSE_GROUPS.values(), start=1):
        table[list(ids)] = group
    return table[np.asarray(parts, dtype=np.uint8)]


def densepose_overlaps(ours: np.ndarray, theirs: np.ndarray) -> tuple[Overlap, Overlap, Overlap]:
    """Per part, per coarse group, and body against no body, of two part-index maps, on the pixels both
    decoded surely."""
    sure = (ours != DENSEPOSE_UNSURE) & (theirs != DENSEPOSE_UNSURE)
    ours, theirs = ours[sure], theirs[sure]
    parts = Overlap(DENSEPOSE_NUM_PARTS + 1).add(ours, theirs)
    groups = Overlap(len(DENSEPOSE_GROUP_NAMES)).add(densepose_group_map(ours), densepose_group_map(theirs))
    body = Overlap(2).add((ours > 0).astype(np.uint8), (theirs > 0).astype(np.uint8))
    return parts, groups, body


def body_groups(overlap: Overlap) -> float:
    """The mean IoU over the coarse body groups either side has (no body left out)."""
    return overlap.mean_iou(range(1, len(DENSEPOSE_GROUP_NAMES)))


def torso_length(keypoints: np.ndarray) -> float | None:
    """Neck to mid-hip (the hips' midpoint when MidHip is missing), in pixels."""
    neck = keypoints[Body25.NECK]
    hip = keypoints[Body25.MID_HIP]
    if hip[2] <= 0:
        hips = [keypoints[j] for j in (Body25.L_HIP, Body25.R_HIP) if keypoints[j][2] > 0]
        hip = np.mean(hips, axis=0) if hips else None
    if neck[2] <= 0 or hip is None:
        return None
    return float(np.hypot(*(neck[:2] - hip[:2])))


@dataclass
class PoseComparison:
    """Per joint: distances in their torso lengths where both found it; who alone found it."""

    distances: dict[int, list[float]] = field(default_factory=lambda: {j: [] for j in BODY_JOINTS})
    only_ours: dict[int, int] = field(default_factory=lambda: dict.fromkeys(BODY_JOINTS, 0))
    only_theirs: dict[int, int] = field(default_factory=lambda: dict.fromkeys(BODY_JOINTS, 0))

    def add(self, ours: np.ndarray | None, theirs: np.ndarray) -> dict[int, float]:
        """Adds one person; returns that person's distances by joint."""
        scale = torso_length(theirs)
        found = {}
        for joint in BODY_JOINTS:
            we_have = ours is not None and ours[joint][2] > 0
            they_have = theirs[joint][2] > 0
            if we_have and they_have and scale:
                found[joint] = float(np.hypot(*(ours[joint][:2] - theirs[joint][:2]))) / scale
                self.distances[joint].append(found[joint])
            elif we_have and not they_have:
                self.only_ours[joint] += 1
            elif they_have and not we_have:
                self.only_theirs[joint] += 1
        return found

    def all_distances(self) -> list[float]:
        return [d for values in self.distances.values() for d in values]

    def pck(self, threshold: float) -> float:
        values = self.all_distances()
        return float(np.mean([d <= threshold for d in values])) if values else float("nan")


def mask_iou(ours: np.ndarray, theirs: np.ndarray) -> float:
    union = np.logical_or(ours, theirs).sum()
    return float(np.logical_and(ours, theirs).sum() / union) if union else 1.0


# ---- running preprocess ----------------------------------------------------------------------


def build_catalog(groundtruth: Path, catalog: Path) -> None:
    """The photos alone, laid out as a VITON-HD catalog (image/ and cloth/)."""
    for folder in ("image", "cloth"):
        (catalog / folder).mkdir(parents=True, exist_ok=True)
        for path in sorted((groundtruth / folder).glob("*.jpg")):
            shutil.copyfile(path, catalog / folder / path.name)


def run_preprocess(catalog: Path, out: Path) -> dict[tuple[str, str], str]:
    """`vitonprep preprocess --catalog catalog --out out` as the CLI runs it (split test); returns the
    failed items' (kind, stem) -> "stage: error code"."""
    from flows.local import run_flow
    from tasks.stages.registry import PreprocessConfig

    config = PreprocessConfig(catalog=str(catalog), out=str(out), split="test")
    summary = run_flow(config, show_progress=False)
    return {(failure["kind"], Path(failure["key"]).stem): f"{failure['stage']}: {failure['error_code']}" for failure in summary["failed"]}


# ---- comparing -------------------------------------------------------------------------------


def compare(groundtruth: Path, split: Path, failed: dict[tuple[str, str], str] | None = None) -> dict:
    """Every comparison, per item and overall, as plain data; the images for the contact sheet apart.
    An item in `failed` ((kind, stem) -> why) counts as missing whatever its file name holds (a person's paired
    cloth may sit under a failed garment's name)."""
    failed = failed or {}
    from vitonhd_models.agnostic import parse_agnostic

    parse_all, agnostic_all = Overlap(20), Overlap(13)
    parse_groups = Overlap(13)
    densepose_parts, densepose_groups, densepose_body = densepose_overlaps(np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    pose = PoseComparison()
    persons, garments, sheet = [], [], []
    for image_path in sorted((groundtruth / "image").glob("*.jpg")):
        stem = image_path.stem
        their_parse_file = their_parse_path(groundtruth, stem)
        their_pose_file = groundtruth / "openpose_json" / f"{stem}_keypoints.json"
        our_parse_file = split / "image-parse-v3" / f"{stem}.png"
        our_pose_file = split / "openpose_json" / f"{stem}_keypoints.json"
        our_agnostic_file = split / "image-parse-agnostic-v3.2" / f"{stem}.png"
        their_densepose_file = groundtruth / "image-densepose" / f"{stem}.jpg"
        our_densepose_file = split / "image-densepose" / f"{stem}.jpg"
        row: dict = {"item": stem}
        densepose_tiles: list[np.ndarray] = []  # on the item's sheet row, after its parse
        if ("person", stem) in failed:
            row["missing"] = failed["person", stem]
            persons.append(row)
            continue
        if not our_parse_file.is_file():
            row["missing"] = "no parse from us"
            persons.append(row)
            continue
        ours = read_parse(our_parse_file)
        our_keypoints = read_keypoints(our_pose_file) if our_pose_file.is_file() else None
        if their_parse_file is not None:
            theirs = read_parse(their_parse_file)
            item_labels, item_groups = Overlap(20).add(ours, theirs), Overlap(13).add(group_map(ours), group_map(theirs))
            parse_all.add(ours, theirs)
            parse_groups.add(group_map(ours), group_map(theirs))
            row["parse_source"] = their_parse_file.parent.name
            row["parse_mean_iou7"] = item_groups.mean_iou(HEADLINE_GROUPS)
            row["parse_pixel_accuracy"] = item_labels.pixel_accuracy()
            row["parse_group_iou"] = _named(item_groups.iou(), GROUP_NAMES)
            row["parse_label_iou"] = _named(item_labels.iou(), [label.name.lower() for label in Cihp])
            sheet.append((stem, read_rgb(image_path), ours, theirs, densepose_tiles))
        if their_densepose_file.is_file():
            if our_densepose_file.is_file():
                dp_parts, dp_groups, dp_body = densepose_overlaps(read_densepose(our_densepose_file),
                                                                   read_densepose(their_densepose_file))
                densepose_parts.merge(dp_parts)
                densepose_groups.merge(dp_groups)
                densepose_body.merge(dp_body)
                row["densepose_mean_group_iou"] = body_groups(dp_groups)
                row["densepose_body_iou"] = float(dp_body.iou()[1])
                row["densepose_group_iou"] = _named(dp_groups.iou(), DENSEPOSE_GROUP_NAMES)
                row["densepose_part_iou"] = _named(dp_parts.iou(), DENSEPOSE_PART_NAMES)
                densepose_tiles += [read_rgb(our_densepose_file), read_rgb(their_densepose_file)]
            else:
                row["densepose_missing"] = "no DensePose render from us"
        if their_pose_file.is_file():
            their_keypoints = read_keypoints(their_pose_file)
            if their_keypoints is not None:
                row["pose_distance"] = {Body25(j).name.lower(): d for j, d in pose.add(our_keypoints, their_keypoints).items()}
                if their_parse_file is not None and our_agnostic_file.is_file():
                    their_agnostic = parse_agnostic(theirs, their_keypoints)
                    item_agnostic = Overlap(13).add(group_map(read_parse(our_agnostic_file)), group_map(their_agnostic))
                    agnostic_all.add(group_map(read_parse(our_agnostic_file)), group_map(their_agnostic))
                    row["agnostic_mean_iou7"] = item_agnostic.mean_iou(HEADLINE_GROUPS)
        persons.append(row)

    for cloth_path in sorted((groundtruth / "cloth").glob("*.jpg")):
        stem = cloth_path.stem
        their_mask_file = groundtruth / "cloth-mask" / f"{stem}.jpg"
        our_mask_file = split / "cloth-mask" / f"{stem}.jpg"
        if not their_mask_file.is_file():
            continue
        if ("garment", stem) in failed or not our_mask_file.is_file():
            garments.append({"item": stem, "missing": failed.get(("garment", stem), "no cloth mask from us")})
            continue
        ours, theirs = read_mask(our_mask_file), read_mask(their_mask_file)
        garments.append({"item": stem, "mask_iou": mask_iou(ours, theirs)})
        sheet.append((stem, read_rgb(cloth_path), ours, theirs, []))

    mask_ious = [g["mask_iou"] for g in garments if "mask_iou" in g]
    distances = {Body25(j).name.lower(): pose.distances[j] for j in BODY_JOINTS}
    overall = {
        "parse_mean_iou7": parse_groups.mean_iou(HEADLINE_GROUPS),
        "parse_pixel_accuracy": parse_all.pixel_accuracy(),
        "parse_group_iou": _named(parse_groups.iou(), GROUP_NAMES),
        "parse_group_accuracy": _named(parse_groups.accuracy(), GROUP_NAMES),
        "parse_label_iou": _named(parse_all.iou(), [label.name.lower() for label in Cihp]),
        "parse_label_accuracy": _named(parse_all.accuracy(), [label.name.lower() for label in Cihp]),
        "agnostic_mean_iou7": agnostic_all.mean_iou(HEADLINE_GROUPS),
        "agnostic_group_iou": _named(agnostic_all.iou(), GROUP_NAMES),
        "pck": {str(t): pose.pck(t) for t in PCK_THRESHOLDS},
        "pose_median_distance": {name: float(np.median(d)) for name, d in distances.items() if d},
        "pose_max_distance": {name: float(np.max(d)) for name, d in distances.items() if d},
        "joints_only_ours": {Body25(j).name.lower(): n for j, n in pose.only_ours.items() if n},
        "joints_only_theirs": {Body25(j).name.lower(): n for j, n in pose.only_theirs.items() if n},
        "densepose_items": sum("densepose_mean_group_iou" in p for p in persons),
        "densepose_mean_group_iou": body_groups(densepose_groups),
        "densepose_body_iou": float(densepose_body.iou()[1]),
        "densepose_group_iou": _named(densepose_groups.iou(), DENSEPOSE_GROUP_NAMES),
        "densepose_part_iou": _named(densepose_parts.iou(), DENSEPOSE_PART_NAMES),
        "mask_mean_iou": float(np.mean(mask_ious)) if mask_ious else float("nan"),
        "mask_min_iou": float(np.min(mask_ious)) if mask_ious else float("nan"),
        "masks_missing": [g["item"] for g in garments if "missing" in g],
        "persons_missing": [p["item"] for p in persons if "missing" in p],
    }
    return {"overall": overall, "persons": persons, "garments": garments, "sheet": sheet}


def _named(values: np.ndarray, names) -> dict[str, float]:
    return {name: float(value) for name, value in zip(names, values) if not math.isnan(value)}


# ---- the contact sheet -----------------------------------------------------------------------


def disagreement(photo: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """The photo dimmed; for parse maps, where our label differs from theirs in their label's colour
    (what we should have said); for masks, red where only they have garment, green where only we do."""
    from vitonhd_models.contract import colourise_parse

    shown = (photo // 3 + 100).astype(np.uint8)
    if ours.dtype == bool:
        shown[theirs & ~ours] = (255, 0, 0)
        shown[ours & ~theirs] = (0, 200, 0)
        return shown
    differs = group_map(ours) != group_map(theirs)
    shown[differs] = colourise_parse(theirs)[differs]
    return shown


def write_sheet(sheet: list, path: Path) -> None:
    from tasks.stages.contact_sheet import contact_sheet, encode_png
    from vitonhd_models.contract import colourise_parse

    def shown(value: np.ndarray) -> np.ndarray:
        if value.dtype == bool:
            return np.repeat((value * 255).astype(np.uint8)[..., None], 3, axis=2)
        return colourise_parse(value)

    rows = [(f"{name}: photo | ours | theirs | where they disagree" + (" | DensePose: ours | theirs" if extra else ""),
             [photo, shown(ours), shown(theirs), disagreement(photo, ours, theirs), *extra])
            for name, photo, ours, theirs, extra in sheet]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(contact_sheet(rows)))


# ---- printing --------------------------------------------------------------------------------


def print_tables(result: dict) -> None:
    overall = result["overall"]
    print("## Parse (CIHP) against the dataset's\n")
    print("| item | source | mean IoU, 7 groups | pixel accuracy | " + " | ".join(GROUP_NAMES[:9]) + " |")
    print("|---|---|---:|---:|" + "---:|" * 9)
    for row in result["persons"]:
        if "parse_mean_iou7" not in row:
            continue
        groups = row["parse_group_iou"]
        cells = " | ".join(_fmt(groups.get(name)) for name in GROUP_NAMES[:9])
        print(f"| {row['item']} | {row['parse_source']} | {_fmt(row['parse_mean_iou7'])} | "
              f"{_fmt(row['parse_pixel_accuracy'])} | {cells} |")
    groups = overall["parse_group_iou"]
    cells = " | ".join(_fmt(groups.get(name)) for name in GROUP_NAMES[:9])
    print(f"| **overall** | | **{_fmt(overall['parse_mean_iou7'])}** | {_fmt(overall['parse_pixel_accuracy'])} | {cells} |")
    print("\n| CIHP label | IoU | accuracy (their pixels we match) |\n|---|---:|---:|")
    for name, value in overall["parse_label_iou"].items():
        print(f"| {name} | {_fmt(value)} | {_fmt(overall['parse_label_accuracy'].get(name))} |")

    print("\n## Parse-agnostic (contract §1.6 on their parse and pose vs ours)\n")
    print("| item | mean IoU, 7 groups |\n|---|---:|")
    for row in result["persons"]:
        if "agnostic_mean_iou7" in row:
            print(f"| {row['item']} | {_fmt(row['agnostic_mean_iou7'])} |")
    print(f"| **overall** | **{_fmt(overall['agnostic_mean_iou7'])}** |")

    print("\n## DensePose (their render and ours decoded into parts by colour)\n")
    group_names = DENSEPOSE_GROUP_NAMES[1:]
    print("| item | mean IoU, groups present | body | " + " | ".join(group_names) + " |")
    print("|---|---:|---:|" + "---:|" * len(group_names))
    for row in result["persons"]:
        if "densepose_mean_group_iou" in row:
            groups = row["densepose_group_iou"]
            print(f"| {row['item']} | {_fmt(row['densepose_mean_group_iou'])} | {_fmt(row['densepose_body_iou'])} | "
                  + " | ".join(_fmt(groups.get(name)) for name in group_names) + " |")
        elif "densepose_missing" in row:
            print(f"| {row['item']} | {row['densepose_missing']} |")
    groups = overall["densepose_group_iou"]
    print(f"| **overall** ({overall['densepose_items']} items) | **{_fmt(overall['densepose_mean_group_iou'])}** | "
          f"{_fmt(overall['densepose_body_iou'])} | " + " | ".join(_fmt(groups.get(name)) for name in group_names) + " |")
    print("\n| DensePose part | IoU |\n|---|---:|")
    for name, value in overall["densepose_part_iou"].items():
        print(f"| {name} | {_fmt(value)} |")

    print("\n## Pose (BODY_25 0..14, distance in their torso lengths)\n")
    print("| joint | median | max | only ours | only theirs |\n|---|---:|---:|---:|---:|")
    for joint in BODY_JOINTS:
        name = Body25(joint).name.lower()
        print(f"| {name} | {_fmt(overall['pose_median_distance'].get(name), '.3f')} | "
              f"{_fmt(overall['pose_max_distance'].get(name), '.3f')} | {overall['joints_only_ours'].get(name, 0)} | "
              f"{overall['joints_only_theirs'].get(name, 0)} |")
    print("\n| PCK | " + " | ".join(f"@{t}" for t in PCK_THRESHOLDS) + " |\n|---|" + "---:|" * len(PCK_THRESHOLDS))
    print("| all persons | " + " | ".join(_fmt(overall["pck"][str(t)]) for t in PCK_THRESHOLDS) + " |")

    print("\n## Cloth mask\n")
    print("| garment | IoU |\n|---|---:|")
    for row in result["garments"]:
        print(f"| {row['item']} | {row.get('missing') or _fmt(row['mask_iou'])} |")
    print(f"| **mean** | **{_fmt(overall['mask_mean_iou'])}** (min {_fmt(overall['mask_min_iou'])}, "
          f"{len(overall['masks_missing'])} missing) |")
    if overall["persons_missing"]:
        print(f"\nPersons with no parse from us: {', '.join(overall['persons_missing'])}")
    for row in result["persons"] + result["garments"]:
        if "missing" in row:
            print(f"- {row['item']}: {row['missing']}")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groundtruth", type=Path, default=DEFAULT_GROUNDTRUTH,
                        help="a folder laid out like the dataset (default ../shared/groundtruth/vitonhd)")
    parser.add_argument("--out", type=Path, default=Path("bench-output/accuracy"),
                        help="where the catalog, the dataset and contact_sheet.png go")
    parser.add_argument("--dataset", type=Path, default=None,
                        help="compare this split folder (holding image-parse-v3/, ...) instead of running preprocess")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    args = parser.parse_args()

    split, failed = args.dataset, {}
    if split is None:
        shutil.rmtree(args.out / "catalog", ignore_errors=True)
        shutil.rmtree(args.out / "dataset", ignore_errors=True)
        build_catalog(args.groundtruth, args.out / "catalog")
        log(f"preprocess on {args.out / 'catalog'}")
        failed = run_preprocess(args.out / "catalog", args.out / "dataset")
        split = args.out / "dataset" / "test"
    result = compare(args.groundtruth, split, failed)
    sheet_path = args.out / "contact_sheet.png"
    write_sheet(result.pop("sheet"), sheet_path)
    log(f"contact sheet: {sheet_path}")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
