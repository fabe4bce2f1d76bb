"""Validate a dataset root (ours, or a downloaded VITON-HD / HR-VITON release) against the contract.

Two layers:
- Pure checks: small functions on bytes, arrays and plain data, each returning a list of `Problem`s
  (a stable `code`, the file's path relative to the root, a human message). No storage, no threads.
- `validate_dataset(store, splits=None, workers=8, targets=TARGETS)`: finds the splits, lists each
  split's folders once, then checks every person (its image and companion files) and every cloth (and
  its mask) on a thread pool, and every pairs file. It returns a `Report` (problems grouped by code,
  counts, seconds, and a verdict per target).

Targets are the consumers: `vitonhd` (vitonprep's own train and tryon, and VITON-HD's test.py once
its three folder names are linked) and `hrviton` (HR-VITON's cp_dataset*.py). Each problem names the
targets it breaks; most break both. HR-VITON alone reads a paired cloth and mask under each person's name,
`image-densepose/`, `image-parse-agnostic-v3.2/` from disk, and only its own folder names.

Cost: images whose header answers the question (size, mode) are only opened, never decoded (PIL reads
lazily). Pixels are decoded only where values matter: parse maps (label range, LIP's label 10,
parse-agnostic contents) and cloth masks (binariness, emptiness). Reads and decodes run on threads:
fsspec I/O and Pillow's decoders release the GIL.

Every code and what it means is in `CODES`; the thresholds of the two heuristics (LIP label 10, mask
binariness) are named constants below, each with the reasoning behind its value.
"""

from __future__ import annotations

import io
import json
import posixpath
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tasks.infra.store import Store
from vitonhd_models import contract
from vitonhd_models.contract import (
    AGNOSTIC_REQUIRED_KEYPOINTS,
    BODY25_COUNT,
    CIHP_NUM_LABELS,
    IMAGE_HEIGHT,
    IMAGE_SIZE_WH,
    IMAGE_WIDTH,
    JPG,
    MASK_THRESHOLD,
    PARSE_AGNOSTIC_REMOVED_LABELS,
    Body25,
    Cihp,
    keypoint_missing,
)
from vitonhd_models.pairs import pair_fields

VITONHD, HRVITON = "vitonhd", "hrviton"
TARGETS = (VITONHD, HRVITON)
TARGET_NAMES = {VITONHD: "VITON-HD (vitonprep train and tryon; test.py once its folder names are linked)",
                HRVITON: "HR-VITON (cp_dataset*.py)"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong: a stable machine code, the path (relative to the dataset root), a message, and
    the consumers it breaks."""

    code: str
    path: str
    message: str
    targets: tuple[str, ...] = TARGETS


def for_hrviton(problems: Iterable[Problem]) -> list[Problem]:
    """The same problems, as breaking HR-VITON only (files only HR-VITON reads)."""
    return [Problem(p.code, p.path, p.message, (HRVITON,)) for p in problems]


# ---------------------------------------------------------------------------------------------------
# Codes: each one and why it breaks the official loaders (contract sections in brackets)
# ---------------------------------------------------------------------------------------------------

CODES: dict[str, str] = {
    "no_dataset": "no split found: expected <split>_pairs.txt next to <split>/, or train/ or test/ folders "
    "(§1.1, §2.1)",
    "missing_folder": "a folder the loaders read is missing (§1.1, §2.1)",
    "layout_mixed": "folders mix VITON-HD names (image-parse, openpose-*) with HR-VITON names "
    "(image-parse-v3, openpose_*): neither loader finds all of them (§0 item 2)",
    "missing_pairs_file": "the split has no <split>_pairs.txt next to its folder (§1.1)",
    "missing_file": "a companion file the loaders open is missing (§1.1, §2.1)",
    "file_unreadable": "the file cannot be read or is not an image/JSON the loaders can open",
    "image_size": f"not {IMAGE_WIDTH}x{IMAGE_HEIGHT} (W x H): tensors are allocated as {IMAGE_HEIGHT}x{IMAGE_WIDTH} "
    "and keypoints are raw pixels (§0 item 3, §1.2)",
    "image_mode": "not a 3-channel RGB image: the loaders normalise with 3 means (§1.1, §1.2)",
    "parse_rgb": "the parse map is an RGB visualisation: the label ids are lost, scatter_ breaks, "
    "the agnostic code silently does nothing (§0 item 4, HR-VITON #40, #68)",
    "parse_mode": "the parse map is neither P (palette indices) nor L (grey levels = ids) (§1.3)",
    "parse_value_range": f"the parse map holds values above {CIHP_NUM_LABELS - 1}: the {CIHP_NUM_LABELS}-channel "
    "scatter_ raises (§1.3)",
    "parse_lip_label10": "label 10 looks like LIP's Jumpsuits, not CIHP's torso skin/neck: the agnostic "
    "code would erase it as neck (§0 item 5, §1.3)",
    "parse_agnostic_has_clothes": "the parse-agnostic map still holds upper clothes / neck (5, 6, 7, 10): "
    "it was not made by the parse-agnostic algorithm (§1.6, HR-VITON #40)",
    "pose_malformed": f"the OpenPose JSON is not `{{people: [{{pose_keypoints_2d: [{BODY25_COUNT * 3} numbers]}}]}}` "
    "(§1.5)",
    "pose_coco18": "the OpenPose JSON is COCO-18, not BODY_25: indices 9/12 become knees, "
    "the torso mask runs to the knees (§0 item 6, HR-VITON #26)",
    "pose_no_people": "the OpenPose JSON holds no person: people[0] raises IndexError (§1.5)",
    "pose_multiple_people": "the OpenPose JSON holds several people; only people[0] is used (§5)",
    "pose_missing_keypoints": "a keypoint the agnostic needs (neck, shoulders, hips) is (0, 0): "
    "its masks are anchored at the image origin (§0 item 7)",
    "pose_zero_hip_width": "both hips at one point: the agnostic's hip normalisation divides by zero "
    "(§0 item 7, §1.7)",
    "pose_coordinates": f"keypoints are not pixels of the {IMAGE_WIDTH}x{IMAGE_HEIGHT} image (outside it, or "
    "normalised to 0..1) (§0 item 3)",
    "cloth_mask_channels": "the cloth mask has several channels: the loader's mask becomes (1,H,W,3) (§1.1)",
    "cloth_mask_mode": f"the cloth mask is single-channel but not 8-bit grey (L): `>= {MASK_THRESHOLD}` misreads it "
    "(§1.1)",
    "cloth_mask_not_binary": "the cloth mask is not black/white: a grey picture or a soft map, not a 0/255 mask (§5)",
    "cloth_mask_empty": f"the cloth mask thresholded at {MASK_THRESHOLD} (as the loaders do) is empty (§1.1)",
    "pairs_malformed": "a pairs line is not `person.jpg cloth.jpg`: the loader's split() unpacking raises (§1.1)",
    "pairs_missing_file": "a pair names a person or cloth that is not in image/ or cloth/ (§1.1)",
    "name_jpg_case": "the person file ends in .JPG/.Jpg: replace('.jpg', ...) is case-sensitive, "
    "so every companion name comes out wrong (§1.1)",
    "name_extension": "the person file is not a .jpg: the companions' names are derived with "
    "replace('.jpg', ...) (§1.1)",
    "name_extra_jpg": "'.jpg' occurs twice in the person's name: replace('.jpg', ...) replaces both (§1.1)",
    "name_contains_image": "the person's name contains 'image': HR-VITON builds paths with "
    "('image/' + name).replace('image', ...), which rewrites it too (§2.1)",
    "name_whitespace": "the file name holds whitespace: pairs lines are split on whitespace (§1.1)",
    "paired_cloth_missing": "HR-VITON opens cloth/<person>.jpg and cloth-mask/<person>.jpg for every person "
    "of the pairs file (its 'paired' cloth), in test too: FileNotFoundError (§0 item 8; HR-VITON #14, #71, #101)",
    "densepose_missing": "HR-VITON reads image-densepose/<person>.jpg, a 768x1024 RGB DensePose rendering, for "
    "every person: `vitonprep preprocess` draws them unless run with `--densepose none` (§2.1; HR-VITON #8, #15, "
    "#61, #81, #89)",
    "hrviton_folder_names": "HR-VITON reads image-parse-v3/, openpose_json/ and openpose_img/; this split has "
    "only VITON-HD's names (§0 item 2, §2.1)",
}

# ---------------------------------------------------------------------------------------------------
# Folders (contract §1.1: VITON-HD's datasets.py; §2.1: HR-VITON and the released zip)
# ---------------------------------------------------------------------------------------------------

# Roles whose folder name differs between the two codebases: (HR-VITON name, VITON-HD name).
PARSE_DIRS = (contract.DIR_PARSE, contract.DIR_PARSE_VITONHD)
POSE_JSON_DIRS = (contract.DIR_POSE_JSON, contract.DIR_POSE_JSON_VITONHD)
POSE_IMG_DIRS = (contract.DIR_POSE_IMG, contract.DIR_POSE_IMG_VITONHD)
ALIASED_ROLES = {"parse": PARSE_DIRS, "pose_json": POSE_JSON_DIRS, "pose_img": POSE_IMG_DIRS}
REQUIRED_DIRS = (contract.DIR_IMAGE, contract.DIR_CLOTH, contract.DIR_CLOTH_MASK)
OPTIONAL_DIRS = (contract.DIR_PARSE_AGNOSTIC, contract.DIR_AGNOSTIC, contract.DIR_DENSEPOSE)  # checked where present
HRVITON_DIRS = (contract.DIR_PARSE_AGNOSTIC, contract.DIR_DENSEPOSE)  # HR-VITON reads them from disk (§2.1)
DEFAULT_SPLITS = ("train", "test")
# What to add where HR-VITON's DensePose renders are missing (README, "Who reads what").
DENSEPOSE_HOW = ("run `vitonprep preprocess` with `--densepose geometric` (the default: drawn from the pose and "
                 "the parse), or add detectron2's renders: `apply_net.py show <densepose_rcnn_R_50_FPN_s1x config> "
                 "<weights> <image> dp_segm` with alpha 1 on a black canvas, one 768x1024 RGB JPEG under each "
                 "person's file name (`vitonprep preprocess` never overwrites them)")

# ---------------------------------------------------------------------------------------------------
# Heuristic thresholds
# ---------------------------------------------------------------------------------------------------

# LIP's label 10 (Jumpsuits) vs CIHP's label 10 (torso skin, used as "neck"). CIHP's 10 is bare skin
# of the neck and upper chest: a few percent of the person's pixels, in the top part of the body (a
# crop top's bare midriff still ends at the waist). LIP's 10 is a whole garment spanning torso and
# legs. Label 10 is flagged as LIP's when either holds:
# 1. it covers more than this fraction of the labelled (non-background) person pixels;
LIP10_MAX_PERSON_FRACTION = 0.25
# 2. its lower part reaches into the bottom of the person: the row above which LIP10_EXTENT_QUANTILE
#    of its pixels lie is below LIP10_MAX_BOTTOM_EXTENT of the way from the person's top row to their
#    bottom row. Measured against the person's extent, not the image's middle, because VITON-HD photos
#    run from head to thigh while full-body photos run to the feet; the quantile (not the lowest pixel)
#    keeps a few stray blurred 10s near the legs from deciding.
LIP10_MAX_BOTTOM_EXTENT = 0.75
LIP10_EXTENT_QUANTILE = 0.9
# The extent rule reads every 4th row and column: 4 px of precision against a threshold of hundreds of
# rows, at a sixteenth of the cost.
LIP10_EXTENT_STRIDE = 4

# Cloth mask binariness. The loaders threshold `np.array(mask) >= 128`, and a JPEG mask is never exactly
# 0/255: ringing and any feathered edge leave grey pixels along the outline. A pixel within
# MASK_NEAR_TOLERANCE grey levels of 0 or 255 counts as black or white. A mask is binary when at least
# MASK_MIN_BINARY_FRACTION of its pixels do: a hard 0/255 mask at JPEG quality 30 leaves 0.1% grey, one
# feathered with a 2 px Gaussian 1.6%, while the mistakes this catches (the garment photo in grey, a
# coloured cut-out, a probability map) leave tens of percent.
MASK_NEAR_TOLERANCE = 32
MASK_MIN_BINARY_FRACTION = 0.98
# Below this fraction of foreground pixels after thresholding, the mask counts as empty (a few stray
# ringing pixels are no garment).
MASK_MIN_FOREGROUND_FRACTION = 0.001

# Parse-agnostic maps have labels 5, 6, 7 (upper clothes, dress, coat) and 10 (neck) set to background
# (contract §1.6). Above this fraction of person pixels still holding them, the map is not agnostic.
# (A small allowance: released maps are not bit-exact with the published script, HR-VITON #39, #68.)
PARSE_AGNOSTIC_MAX_CLOTHES_FRACTION = 0.01

# OpenPose JSON: COCO-18 has 18 x 3 numbers (contract §1.5).
COCO18_COUNT = 18
# A BODY_25 document whose MidHip (8) lies farther than this many hip widths from the midpoint of the
# hips (9, 12) is COCO-18 padded to 75 numbers (there, 8 is RHip and 9/12 are the knees).
MIDHIP_MAX_OFFSET_HIP_WIDTHS = 1.0
MIDHIP_MIN_OFFSET_PX = 30.0

# ---------------------------------------------------------------------------------------------------
# Pure checks: names
# ---------------------------------------------------------------------------------------------------


def _has_whitespace(name: str) -> bool:
    return any(ch.isspace() for ch in name)


def check_person_name(path: str, name: str) -> list[Problem]:
    """The person's file name against what the loaders derive from it (contract §1.1, §2.1)."""
    problems = []
    stem, dot, ext = name.rpartition(".")
    if not dot:
        problems.append(Problem("name_extension", path, f"{name!r} has no extension; persons are <stem>{JPG}"))
    elif f".{ext.lower()}" == JPG and f".{ext}" != JPG:
        problems.append(Problem("name_jpg_case", path, f"{name!r} ends in .{ext}; the loaders need lowercase {JPG}"))
    elif f".{ext}" != JPG:
        problems.append(Problem("name_extension", path, f"{name!r} ends in .{ext}; persons are <stem>{JPG}"))
    if dot and JPG in stem:
        problems.append(Problem("name_extra_jpg", path, f"{name!r} holds '{JPG}' before its extension"))
    if contract.DIR_IMAGE in name:  # HR-VITON: ('image/' + name).replace('image', <folder>)
        problems.append(Problem("name_contains_image", path, f"{name!r} contains '{contract.DIR_IMAGE}'"))
    if _has_whitespace(name):
        problems.append(Problem("name_whitespace", path, f"{name!r} contains whitespace"))
    return problems


def check_cloth_name(path: str, name: str) -> list[Problem]:
    """The cloth's file name: the loaders use it as listed (contract §1.1), so only whitespace breaks."""
    if _has_whitespace(name):
        return [Problem("name_whitespace", path, f"{name!r} contains whitespace")]
    return []


def person_stem(name: str) -> str:
    """The stem companions are named after: the name without its last extension, whatever its case."""
    stem, dot, _ = name.rpartition(".")
    return stem if dot else name


# ---------------------------------------------------------------------------------------------------
# Pure checks: images
# ---------------------------------------------------------------------------------------------------


def open_image(data: bytes) -> Image.Image:
    """A lazily opened image: size and mode come from the header; pixels are decoded on first access."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def check_size(path: str, size: tuple[int, int]) -> list[Problem]:
    if tuple(size) != IMAGE_SIZE_WH:
        return [Problem("image_size", path, f"{size[0]}x{size[1]}, expected {IMAGE_WIDTH}x{IMAGE_HEIGHT} (W x H)")]
    return []


def check_rgb_image(path: str, data: bytes) -> list[Problem]:
    """A person, cloth, rendered pose, agnostic or densepose image: 768x1024 RGB. Header only."""
    try:
        image = open_image(data)
    except Exception as error:  # noqa: BLE001  (any decoder error means the loaders cannot open it)
        return [_unreadable(path, error)]
    problems = check_size(path, image.size)
    if image.mode != "RGB":
        channels = len(image.getbands())
        problems.append(Problem("image_mode", path, f"mode {image.mode} ({channels} channels), expected RGB"))
    return problems


def check_parse_labels(path: str, histogram: np.ndarray) -> list[Problem]:
    """Values above 19, from the label histogram (`np.bincount` of the map, length 256)."""
    bad = np.nonzero(histogram[CIHP_NUM_LABELS:])[0] + CIHP_NUM_LABELS
    if len(bad):
        count = int(histogram[CIHP_NUM_LABELS:].sum())
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        return [Problem("parse_value_range", path, f"{count} pixels hold values {shown}; CIHP ids are "
                        f"0..{CIHP_NUM_LABELS - 1}")]
    return []


def lip_label10_reason(
    labels: np.ndarray, histogram: np.ndarray | None = None, stride: int = LIP10_EXTENT_STRIDE
) -> str | None:
    """Why label 10 in this parse map looks like LIP's Jumpsuits (see the LIP10_* constants), or None.

    `histogram`: the full map's 256-bin label histogram (computed from `labels` when not given).
    `stride`: the extent rule reads every stride-th row and column (1 when `labels` is already reduced).
    """
    if histogram is None:
        histogram = np.bincount(labels.ravel(), minlength=256)
    label10 = int(histogram[Cihp.TORSO_SKIN])
    person = int(histogram.sum() - histogram[Cihp.BACKGROUND])
    if label10 == 0 or person == 0:
        return None
    fraction = label10 / person
    if fraction > LIP10_MAX_PERSON_FRACTION:
        return (
            f"label 10 covers {fraction:.0%} of the person's pixels (> {LIP10_MAX_PERSON_FRACTION:.0%}); "
            "CIHP's torso skin/neck is a small region"
        )
    sample = labels[::stride, ::stride]
    person_rows = np.flatnonzero(sample.any(axis=1))
    per_row = np.count_nonzero(sample == Cihp.TORSO_SKIN, axis=1)
    if len(person_rows) < 2 or not per_row.any():
        return None
    top, bottom = int(person_rows[0]), int(person_rows[-1])
    cumulative = np.cumsum(per_row)
    row = int(np.searchsorted(cumulative, LIP10_EXTENT_QUANTILE * cumulative[-1]))
    extent = (row - top) / (bottom - top)
    if extent > LIP10_MAX_BOTTOM_EXTENT:
        return (
            f"label 10 reaches {extent:.0%} of the way down the person (row {row * stride}; "
            f"> {LIP10_MAX_BOTTOM_EXTENT:.0%}); CIHP's torso skin/neck ends above the hips"
        )
    return None


def check_lip_label10(
    path: str, labels: np.ndarray, histogram: np.ndarray | None = None, stride: int = LIP10_EXTENT_STRIDE
) -> list[Problem]:
    reason = lip_label10_reason(labels, histogram, stride)
    return [Problem("parse_lip_label10", path, reason)] if reason else []


def check_parse_agnostic_labels(path: str, histogram: np.ndarray) -> list[Problem]:
    """A parse-agnostic map keeps (almost) none of labels 5, 6, 7, 10 (contract §1.6)."""
    person = int(histogram.sum() - histogram[Cihp.BACKGROUND])
    kept = int(sum(histogram[label] for label in PARSE_AGNOSTIC_REMOVED_LABELS))
    if person and kept / person > PARSE_AGNOSTIC_MAX_CLOTHES_FRACTION:
        return [
            Problem(
                "parse_agnostic_has_clothes",
                path,
                f"{kept / person:.0%} of the person's pixels are upper clothes or neck "
                f"(> {PARSE_AGNOSTIC_MAX_CLOTHES_FRACTION:.0%}); the algorithm sets them to 0",
            )
        ]
    return []


def check_parse(path: str, data: bytes, *, agnostic: bool = False) -> list[Problem]:
    """A parse (or, with `agnostic`, parse-agnostic) PNG: 768x1024, P or L, ids 0..19, CIHP semantics."""
    try:
        image = open_image(data)
    except Exception as error:  # noqa: BLE001
        return [_unreadable(path, error)]
    problems = check_size(path, image.size)
    if image.mode in ("RGB", "RGBA"):
        problems.append(Problem("parse_rgb", path, f"mode {image.mode}: a colour picture, not label ids in P or L"))
        return problems
    if image.mode not in ("P", "L"):
        problems.append(Problem("parse_mode", path, f"mode {image.mode}, expected P (palette indices) or L"))
        return problems
    try:
        histogram = np.asarray(image.histogram(), dtype=np.int64)  # decodes; P: counts of palette indices
    except Exception as error:  # noqa: BLE001  (a truncated file fails here, at decode time)
        return problems + [_unreadable(path, error)]
    problems += check_parse_labels(path, histogram)
    if agnostic:
        problems += check_parse_agnostic_labels(path, histogram)
    elif histogram[Cihp.TORSO_SKIN]:
        # The extent rule needs rows: a nearest-neighbour reduction keeps the ids and skips the full copy.
        width, height = image.size
        reduced = image.resize(
            (max(1, width // LIP10_EXTENT_STRIDE), max(1, height // LIP10_EXTENT_STRIDE)), Image.Resampling.NEAREST
        )
        problems += check_lip_label10(path, np.asarray(reduced), histogram, stride=1)
    return problems


def check_mask_pixels(path: str, mask: np.ndarray) -> list[Problem]:
    """A decoded (H, W) uint8 mask: black/white within tolerance, and not empty at the loaders' 128."""
    return check_mask_histogram(path, np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256))


def check_mask_histogram(path: str, histogram: np.ndarray) -> list[Problem]:
    """`check_mask_pixels` on the mask's 256-bin grey-level histogram."""
    histogram = np.asarray(histogram, dtype=np.int64)
    total = int(histogram.sum())
    if total == 0:
        return [Problem("cloth_mask_empty", path, "the mask has no pixels")]
    problems = []
    near = int(histogram[: MASK_NEAR_TOLERANCE + 1].sum() + histogram[255 - MASK_NEAR_TOLERANCE :].sum())
    if near / total < MASK_MIN_BINARY_FRACTION:
        problems.append(
            Problem(
                "cloth_mask_not_binary",
                path,
                f"{1 - near / total:.1%} of pixels are grey (more than {MASK_NEAR_TOLERANCE} from 0 and 255; "
                f"at most {1 - MASK_MIN_BINARY_FRACTION:.0%} allowed)",
            )
        )
    foreground = int(histogram[MASK_THRESHOLD:].sum()) / total
    if foreground < MASK_MIN_FOREGROUND_FRACTION:
        problems.append(
            Problem("cloth_mask_empty", path, f"{foreground:.2%} of pixels are >= {MASK_THRESHOLD}: no garment")
        )
    return problems


def check_cloth_mask(path: str, data: bytes) -> list[Problem]:
    """A cloth mask JPEG: 768x1024, one 8-bit channel (L), black/white, not empty."""
    try:
        image = open_image(data)
    except Exception as error:  # noqa: BLE001
        return [_unreadable(path, error)]
    problems = check_size(path, image.size)
    bands = image.getbands()
    if len(bands) != 1:
        problems.append(
            Problem("cloth_mask_channels", path, f"mode {image.mode} ({len(bands)} channels), expected 1-channel L")
        )
    elif image.mode != "L":
        problems.append(Problem("cloth_mask_mode", path, f"mode {image.mode}, expected 8-bit grey L"))
        return problems
    try:
        histogram = (image if image.mode == "L" else image.convert("L")).histogram()  # decodes
    except Exception as error:  # noqa: BLE001
        return problems + [_unreadable(path, error)]
    return problems + check_mask_histogram(path, np.asarray(histogram))


# ---------------------------------------------------------------------------------------------------
# Pure checks: OpenPose JSON
# ---------------------------------------------------------------------------------------------------


def check_pose_json(path: str, data: bytes) -> list[Problem]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return [Problem("pose_malformed", path, f"not JSON: {error}")]
    return check_pose_document(path, document)


def check_pose_document(path: str, document: Any) -> list[Problem]:
    """An OpenPose document as VITON-HD reads it: people[0].pose_keypoints_2d, BODY_25, 768x1024 pixels."""

    def malformed(message: str) -> list[Problem]:
        return [Problem("pose_malformed", path, message)]

    if not isinstance(document, dict):
        return malformed(f"a JSON {type(document).__name__}, expected an object with a `people` list")
    people = document.get("people")
    if not isinstance(people, list):
        return malformed("no `people` list")
    if not people:
        return [Problem("pose_no_people", path, "`people` is empty: the pose model found no person")]
    problems = []
    if len(people) > 1:
        problems.append(Problem("pose_multiple_people", path, f"{len(people)} people; only people[0] is used"))
    first = people[0]
    if not isinstance(first, dict):
        return problems + malformed("people[0] is not an object")
    flat = first.get("pose_keypoints_2d")
    if flat is None and "pose_keypoints" in first:
        return problems + malformed("people[0] has `pose_keypoints` (OpenPose < 1.2), not `pose_keypoints_2d`")
    if not isinstance(flat, list):
        return problems + malformed("people[0] has no `pose_keypoints_2d` list")
    try:
        values = np.asarray(flat, dtype=np.float64)
    except (TypeError, ValueError):
        return problems + malformed("pose_keypoints_2d holds non-numbers")
    if values.ndim != 1 or not np.isfinite(values).all():
        return problems + malformed("pose_keypoints_2d is not a flat list of finite numbers")
    if len(values) == COCO18_COUNT * 3:
        return problems + [Problem("pose_coco18", path, f"{len(values)} numbers = 18 keypoints x 3 (COCO-18)")]
    if len(values) != BODY25_COUNT * 3:
        return problems + malformed(f"pose_keypoints_2d has {len(values)} numbers; BODY_25 has {BODY25_COUNT * 3}")
    keypoints = values.reshape(BODY25_COUNT, 3)
    return problems + check_body25_keypoints(path, keypoints)


def _present(keypoints: np.ndarray, joint: int) -> bool:
    return not keypoint_missing(keypoints[joint])


def check_body25_keypoints(path: str, keypoints: np.ndarray) -> list[Problem]:
    """(25, 3) x, y, confidence: the agnostic's keypoints present, hips apart, pixel coordinates."""
    problems = []
    missing = [Body25(joint).name for joint in AGNOSTIC_REQUIRED_KEYPOINTS if not _present(keypoints, joint)]
    if missing:
        problems.append(Problem("pose_missing_keypoints", path, f"(0, 0) at {', '.join(missing)}"))
    hips = (Body25.R_HIP, Body25.L_HIP)
    if all(_present(keypoints, joint) for joint in hips):
        hip_width = float(np.hypot(*(keypoints[Body25.L_HIP, :2] - keypoints[Body25.R_HIP, :2])))
        if hip_width == 0:
            problems.append(Problem("pose_zero_hip_width", path, f"both hips at {tuple(keypoints[Body25.R_HIP, :2])}"))
        elif _present(keypoints, Body25.MID_HIP):
            middle = (keypoints[Body25.L_HIP, :2] + keypoints[Body25.R_HIP, :2]) / 2
            offset = float(np.hypot(*(keypoints[Body25.MID_HIP, :2] - middle)))
            if offset > max(MIDHIP_MAX_OFFSET_HIP_WIDTHS * hip_width, MIDHIP_MIN_OFFSET_PX):
                problems.append(
                    Problem(
                        "pose_coco18",
                        path,
                        f"MidHip (8) lies {offset:.0f} px from the middle of the hips (9, 12), {hip_width:.0f} px "
                        "apart: COCO-18 order padded to 75 numbers (8 = RHip, 9/12 = knees)",
                    )
                )
    present = np.array([_present(keypoints, joint) for joint in range(BODY25_COUNT)])
    if present.any():
        xs, ys = keypoints[present, 0], keypoints[present, 1]
        outside = (xs < 0) | (xs > IMAGE_WIDTH) | (ys < 0) | (ys > IMAGE_HEIGHT)
        if outside.any():
            joint = int(np.flatnonzero(present)[np.flatnonzero(outside)[0]])
            x, y = keypoints[joint, :2]
            problems.append(
                Problem(
                    "pose_coordinates",
                    path,
                    f"{int(outside.sum())} keypoints outside the {IMAGE_WIDTH}x{IMAGE_HEIGHT} image, e.g. "
                    f"{Body25(joint).name} at ({x:g}, {y:g}): estimated on another resolution",
                )
            )
        elif present.sum() >= 2 and xs.max() <= 1 and ys.max() <= 1:
            problems.append(
                Problem("pose_coordinates", path, "every keypoint lies in 0..1: normalised, not pixel coordinates")
            )
    return problems


# ---------------------------------------------------------------------------------------------------
# Pure checks: pairs
# ---------------------------------------------------------------------------------------------------


def check_pairs(
    path: str, text: str, persons: set[str] | None, cloths: set[str] | None
) -> tuple[list[Problem], list[tuple[int, str, str]]]:
    """A `<split>_pairs.txt` as the loaders read it (`line.strip().split()` -> person, cloth).

    `persons` / `cloths` are the names in image/ and cloth/ (None: that folder is missing, not checked).
    Returns the problems and the well-formed pairs as (line number, person, cloth).
    """
    problems = []
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{number}"
        fields = pair_fields(line, extension=None)  # the names are checked against image/ and cloth/ below
        if fields is None:
            problems.append(Problem("pairs_malformed", where, f"expected 'person{JPG} cloth{JPG}', got {line!r}"))
            continue
        person, cloth = fields
        pairs.append((number, person, cloth))
        if persons is not None and person not in persons:
            problems.append(Problem("pairs_missing_file", where, f"person {person!r} is not in image/"))
        if cloths is not None and cloth not in cloths:
            problems.append(Problem("pairs_missing_file", where, f"cloth {cloth!r} is not in cloth/"))
    if not text.strip():
        problems.append(Problem("pairs_malformed", path, "the pairs file is empty"))
    return problems, pairs


def check_paired_cloth(path: str, pairs: list[tuple[int, str, str]], layout: SplitLayout) -> list[Problem]:
    """HR-VITON's paired cloth: `cloth/<person>` and `cloth-mask/<person>` for every person of the pairs
    file (`pairs`: what `check_pairs` read)."""
    problems = []
    cloths = layout.files.get(contract.DIR_CLOTH, set())
    for number, person, _ in pairs:
        for folder in (contract.DIR_CLOTH, contract.DIR_CLOTH_MASK):
            # A cloth of that name without its mask is reported with the cloth (missing_file).
            if folder in layout.files and person not in layout.files[folder] and person not in cloths:
                problems.append(Problem(
                    "paired_cloth_missing", layout.rel(folder, person),
                    f"{path}:{number} lists person {person!r}: HR-VITON opens {folder}/{person} as its paired "
                    f"cloth (vitonprep preprocess writes it unless a garment has that name: its paired_cloth row "
                    f"says name_taken)", (HRVITON,)))
    return problems


def _unreadable(path: str, error: BaseException) -> Problem:
    return Problem("file_unreadable", path, f"{type(error).__name__}: {error}")


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What `validate_dataset` found: every problem, how much it checked, how long it took."""

    root: str
    splits: list[str]
    problems: list[Problem]
    counts: dict[str, int]  # persons, cloths, pairs, files (files opened and checked)
    seconds: float
    notes: list[str] = field(default_factory=list)
    targets: tuple[str, ...] = TARGETS  # the consumers checked for

    @property
    def ok(self) -> bool:
        return not self.problems

    def problems_for(self, target: str) -> list[Problem]:
        return [problem for problem in self.problems if target in problem.targets]

    def verdicts(self) -> dict[str, dict[str, Any]]:
        """Per target: ok, how many problems break it, and their codes with counts."""
        verdicts = {}
        for target in self.targets:
            codes: dict[str, int] = {}
            for problem in self.problems_for(target):
                codes[problem.code] = codes.get(problem.code, 0) + 1
            verdicts[target] = {"ok": not codes, "problem_count": sum(codes.values()),
                                "codes": dict(sorted(codes.items(), key=lambda item: (-item[1], item[0])))}
        return verdicts

    def by_code(self) -> dict[str, list[Problem]]:
        """Problems grouped by code, the most frequent code first, paths sorted within a code."""
        groups: dict[str, list[Problem]] = {}
        for problem in sorted(self.problems, key=lambda p: (p.code, p.path)):
            groups.setdefault(problem.code, []).append(problem)
        return dict(sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])))

    def to_dict(self, max_examples: int = 5) -> dict[str, Any]:
        """JSON-able: problems grouped by code with their count, meaning and up to `max_examples` examples."""
        return {
            "root": self.root,
            "ok": self.ok,
            "splits": list(self.splits),
            "counts": dict(self.counts),
            "seconds": round(self.seconds, 3),
            "problem_count": len(self.problems),
            "problems": {
                code: {
                    "count": len(group),
                    "description": CODES.get(code, ""),
                    "examples": [{"path": p.path, "message": p.message} for p in group[:max_examples]],
                    "targets": sorted({target for p in group for target in p.targets}),
                }
                for code, group in self.by_code().items()
            },
            "notes": list(self.notes),
            "targets": self.verdicts(),
        }

    def format_text(self, max_examples: int = 5) -> str:
        """A human report: what was checked, each problem code with its count and examples, a verdict."""
        counts = self.counts
        checked = (
            f"{counts.get('persons', 0)} persons, {counts.get('cloths', 0)} cloths, {counts.get('pairs', 0)} pairs "
            f"({counts.get('files', 0)} files)"
        )
        lines = [f"validated {self.root}: splits {', '.join(self.splits) or '(none)'}"]
        lines.append(f"  checked {checked} in {self.seconds:.1f} s")
        lines += [f"  note: {note}" for note in self.notes]
        groups = self.by_code()
        for code, group in groups.items():
            lines.append("")
            lines.append(f"{code}: {len(group)}")
            if code in CODES:
                lines.append(f"  {CODES[code]}")
            for problem in group[:max_examples]:
                lines.append(f"    {problem.path}: {problem.message}")
            if len(group) > max_examples:
                lines.append(f"    ... and {len(group) - max_examples} more")
        lines.append("")
        for target, verdict in self.verdicts().items():
            codes = ", ".join(f"{code} {count}" for code, count in verdict["codes"].items())
            lines.append(f"{TARGET_NAMES[target]}: " + ("OK" if verdict["ok"] else
                                                          f"{verdict['problem_count']} problems ({codes})"))
        if self.ok:
            lines.append(f"OK: no problems in {checked}")
        else:
            kinds = ", ".join(f"{code} {len(group)}" for code, group in groups.items())
            lines.append(f"FAIL: {len(self.problems)} problems of {len(groups)} kinds ({kinds})")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Discovery and the dataset walk
# ---------------------------------------------------------------------------------------------------


@dataclass
class SplitLayout:
    """One split: where its folders are, what each holds, and which folder plays which role."""

    name: str
    prefix: str  # the split folder relative to the root ("" when the root is the split)
    pairs_file: str | None  # relative to the root
    files: dict[str, set[str]]  # folder name -> file names directly inside it
    roles: dict[str, list[str]]  # "parse", "pose_json", "pose_img" -> the present folder(s) for it

    def rel(self, folder: str, name: str = "") -> str:
        parts = [p for p in (self.prefix, folder, name) if p]
        return posixpath.join(*parts)

    def has(self, folder: str) -> bool:
        return folder in self.files


def discover_splits(
    store: Store, splits: Sequence[str] | None = None
) -> tuple[list[tuple[str, str, str | None]], list[Problem], list[str]]:
    """(name, folder, pairs file) of each split under the root, with problems and notes.

    Splits are the folders next to `<split>_pairs.txt` files, and `train/` and `test/`. A root that
    itself holds image/ or cloth/ is one split (its pairs file, one level up, is not checked).
    """
    problems: list[Problem] = []
    notes: list[str] = []
    if not store.isdir():
        return [], [Problem("no_dataset", "", f"{store.url} is not a folder")], notes
    if store.isdir(contract.DIR_IMAGE) or store.isdir(contract.DIR_CLOTH):
        name = posixpath.basename(store.root) or store.root
        notes.append(f"the root is a split folder; give its parent to check {contract.pairs_file_name(name)} too")
        return [(name, "", None)], problems, notes
    names = set(store.listdir())
    from_pairs = {split for split in map(contract.pairs_file_split, names) if split}
    folders = {split for split in DEFAULT_SPLITS if split in names and store.isdir(split)}
    wanted = list(splits) if splits else sorted(from_pairs | folders)
    found = []
    for split in wanted:
        pairs = contract.pairs_file_name(split)
        has_pairs = pairs in names
        if not store.isdir(split):
            reason = f"{pairs} names split {split!r}" if has_pairs else f"split {split!r} was asked for"
            problems.append(Problem("missing_folder", f"{split}/", f"{reason}, but there is no {split}/ folder"))
            continue
        if not has_pairs:
            problems.append(Problem("missing_pairs_file", pairs, f"{split}/ has no {pairs} next to it"))
        found.append((split, split, pairs if has_pairs else None))
    if not found and not problems:
        problems.append(
            Problem("no_dataset", "", "no <split>_pairs.txt, train/, test/, image/ or cloth/ under the root")
        )
    return found, problems, notes


def list_split(store: Store, name: str, prefix: str, pairs_file: str | None) -> tuple[SplitLayout, list[Problem]]:
    """List the split's folder once and work out which folder plays which role."""
    files: dict[str, set[str]] = {}
    for info in store.list_files(prefix):
        folder, sep, file_name = info.key.partition("/")
        if sep and "/" not in file_name:
            files.setdefault(folder, set()).add(file_name)
    for folder in (*REQUIRED_DIRS, *OPTIONAL_DIRS, *(d for dirs in ALIASED_ROLES.values() for d in dirs)):
        if folder not in files and store.isdir(posixpath.join(prefix, folder) if prefix else folder):
            files[folder] = set()  # present but empty
    layout = SplitLayout(name, prefix, pairs_file, files, {})
    problems = []
    for folder in REQUIRED_DIRS:
        if folder not in files:
            problems.append(Problem("missing_folder", layout.rel(folder) + "/", f"{folder}/ is missing"))
    for role, candidates in ALIASED_ROLES.items():
        layout.roles[role] = [folder for folder in candidates if folder in files]
        if not layout.roles[role]:
            names = " or ".join(f"{folder}/" for folder in candidates)
            problems.append(Problem("missing_folder", layout.rel(candidates[0]) + "/", f"neither {names} exists"))
    hr_complete = all(candidates[0] in files for candidates in ALIASED_ROLES.values())
    vd_complete = all(candidates[1] in files for candidates in ALIASED_ROLES.values())
    if all(layout.roles.values()) and not hr_complete and not vd_complete:
        present = sorted(folder for folders in layout.roles.values() for folder in folders)
        problems.append(Problem("layout_mixed", layout.rel("") or ".", f"folders {', '.join(present)}"))
    elif vd_complete and not hr_complete:
        for hr_name, vd_name in (candidates for candidates in ALIASED_ROLES.values()):
            if hr_name not in files:
                problems.append(Problem("hrviton_folder_names", layout.rel(hr_name) + "/",
                                        f"HR-VITON reads {hr_name}/; this split has {vd_name}/ (rename or link it)",
                                        (HRVITON,)))
    if contract.DIR_PARSE_AGNOSTIC not in files:
        problems.append(Problem("missing_folder", layout.rel(contract.DIR_PARSE_AGNOSTIC) + "/",
                                f"{contract.DIR_PARSE_AGNOSTIC}/ is missing: HR-VITON reads it from disk", (HRVITON,)))
    if contract.DIR_DENSEPOSE not in files:
        problems.append(Problem("densepose_missing", layout.rel(contract.DIR_DENSEPOSE) + "/",
                                f"{contract.DIR_DENSEPOSE}/ is missing: HR-VITON reads "
                                f"{contract.DIR_DENSEPOSE}/<person>{JPG} for every person; {DENSEPOSE_HOW}",
                                (HRVITON,)))
    return layout, problems


class _Checker:
    """Runs the per-item checks of one split; every read goes through the store."""

    def __init__(self, store: Store, layout: SplitLayout):
        self.store = store
        self.layout = layout

    def _file(
        self, folder: str, name: str, owner: str, check: Callable[[str, bytes], list[Problem]]
    ) -> tuple[list[Problem], int]:
        """Check `folder/name` with `check`, or report it missing; returns (problems, files read).
        Problems of the folders only HR-VITON reads break HR-VITON only."""
        problems, read = self._check_file(folder, name, owner, check)
        return (for_hrviton(problems) if folder in HRVITON_DIRS else problems), read

    def _check_file(
        self, folder: str, name: str, owner: str, check: Callable[[str, bytes], list[Problem]]
    ) -> tuple[list[Problem], int]:
        rel = self.layout.rel(folder, name)
        if name not in self.layout.files.get(folder, ()):
            if folder == contract.DIR_DENSEPOSE:
                return [Problem("densepose_missing", rel, f"missing; HR-VITON reads it for {owner}: {DENSEPOSE_HOW}")], 0
            return [Problem("missing_file", rel, f"missing; needed for {owner}")], 0
        try:
            data = self.store.read_bytes(rel)
        except Exception as error:  # noqa: BLE001  (one unreadable file never stops the validation)
            return [_unreadable(rel, error)], 1
        try:
            return check(rel, data), 1
        except Exception as error:  # noqa: BLE001
            return [_unreadable(rel, error)], 1

    def person(self, name: str) -> tuple[list[Problem], int]:
        layout = self.layout
        owner = layout.rel(contract.DIR_IMAGE, name)
        problems = check_person_name(owner, name)
        stem = person_stem(name)
        jobs: list[tuple[str, str, Callable[[str, bytes], list[Problem]]]] = [
            (contract.DIR_IMAGE, name, check_rgb_image)
        ]
        jobs += [(folder, contract.parse_name(stem), check_parse) for folder in layout.roles["parse"]]
        jobs += [(folder, contract.keypoints_json_name(stem), check_pose_json) for folder in layout.roles["pose_json"]]
        jobs += [(folder, contract.rendered_pose_name(stem), check_rgb_image) for folder in layout.roles["pose_img"]]
        if layout.has(contract.DIR_PARSE_AGNOSTIC):
            jobs.append((contract.DIR_PARSE_AGNOSTIC, contract.parse_agnostic_name(stem), _check_parse_agnostic))
        if layout.has(contract.DIR_AGNOSTIC):
            jobs.append((contract.DIR_AGNOSTIC, contract.agnostic_name(stem), check_rgb_image))
        if layout.has(contract.DIR_DENSEPOSE):  # HR-VITON opens image-densepose/<the person's file name> (§2.1)
            jobs.append((contract.DIR_DENSEPOSE, name, check_rgb_image))
        files = 0
        for folder, file_name, check in jobs:
            found, read = self._file(folder, file_name, owner, check)
            problems += found
            files += read
        return problems, files

    def cloth(self, name: str) -> tuple[list[Problem], int]:
        owner = self.layout.rel(contract.DIR_CLOTH, name)
        problems = check_cloth_name(owner, name)
        found, files = self._file(contract.DIR_CLOTH, name, owner, check_rgb_image)
        problems += found
        if self.layout.has(contract.DIR_CLOTH_MASK):
            found, read = self._file(contract.DIR_CLOTH_MASK, name, owner, check_cloth_mask)
            problems += found
            files += read
        return problems, files


def _check_parse_agnostic(path: str, data: bytes) -> list[Problem]:
    return check_parse(path, data, agnostic=True)


def validate_dataset(
    store: Store,
    splits: Sequence[str] | None = None,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
    targets: Sequence[str] = TARGETS,
) -> Report:
    """Check every split under `store` against the contract; see the module docstring.

    `splits` limits the check to those split names. `workers` threads read and check files at once.
    `progress(done, total)` is called from the calling thread as persons and cloths finish. `targets`:
    the consumers to check for (problems breaking none of them are left out).
    """
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise ValueError(f"unknown targets {unknown}: expected some of {list(TARGETS)}")
    started = time.perf_counter()
    found, problems, notes = discover_splits(store, splits)
    counts = {"persons": 0, "cloths": 0, "pairs": 0, "files": 0}
    layouts = []
    for name, prefix, pairs_file in found:
        layout, listed = list_split(store, name, prefix, pairs_file)
        problems += listed
        layouts.append(layout)
        vitonhd_names = [candidates[1] for candidates in ALIASED_ROLES.values()]
        if VITONHD in targets and not any(layout.has(folder) for folder in vitonhd_names) and all(layout.roles.values()):
            links = "; ".join(f"ln -s {candidates[0]} {candidates[1]}" for candidates in ALIASED_ROLES.values())
            notes.append(f"{layout.prefix or '.'}: VITON-HD's own datasets.py opens {', '.join(vitonhd_names)}: "
                         f"link them in the split folder before running its test.py ({links}); vitonprep's "
                         "train and tryon read these folders as they are")
        if pairs_file is not None:
            persons = layout.files.get(contract.DIR_IMAGE)
            cloths = layout.files.get(contract.DIR_CLOTH)
            try:
                text = store.read_bytes(pairs_file).decode("utf-8")
            except UnicodeDecodeError as error:
                problems.append(Problem("pairs_malformed", pairs_file, f"not UTF-8 text: {error}"))
            else:
                found_pairs, pairs = check_pairs(pairs_file, text, persons, cloths)
                problems += found_pairs + check_paired_cloth(pairs_file, pairs, layout)
                counts["pairs"] += len(pairs)
            counts["files"] += 1
    items: list[tuple[Callable[[str], tuple[list[Problem], int]], str, str]] = []
    for layout in layouts:
        checker = _Checker(store, layout)
        items += [(checker.person, "persons", name) for name in sorted(layout.files.get(contract.DIR_IMAGE, ()))]
        items += [(checker.cloth, "cloths", name) for name in sorted(layout.files.get(contract.DIR_CLOTH, ()))]
    total = len(items)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="validate") as pool:
        futures = {pool.submit(check, name): kind for check, kind, name in items}
        for done, future in enumerate(as_completed(futures), start=1):
            found_problems, files = future.result()
            problems += found_problems
            counts[futures[future]] += 1
            counts["files"] += files
            if progress is not None:
                progress(done, total)
    problems = [problem for problem in problems if set(problem.targets) & set(targets)]
    problems.sort(key=lambda p: (p.code, p.path, p.message))
    return Report(
        root=store.url,
        splits=[layout.name for layout in layouts],
        problems=problems,
        counts=counts,
        seconds=time.perf_counter() - started,
        notes=notes,
        targets=tuple(target for target in TARGETS if target in targets),
    )


def codes_of(problems: Iterable[Problem]) -> set[str]:
    """The distinct codes among `problems`."""
    return {problem.code for problem in problems}


__all__ = [
    "CODES",
    "Problem",
    "Report",
    "TARGETS",
    "check_paired_cloth",
    "check_body25_keypoints",
    "check_cloth_mask",
    "check_cloth_name",
    "check_lip_label10",
    "check_mask_histogram",
    "check_mask_pixels",
    "check_pairs",
    "check_parse",
    "check_parse_agnostic_labels",
    "check_parse_labels",
    "check_person_name",
    "check_pose_document",
    "check_pose_json",
    "check_rgb_image",
    "check_size",
    "codes_of",
    "discover_splits",
    "lip_label10_reason",
    "validate_dataset",
]
