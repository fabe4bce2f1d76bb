"""Clothing-agnostic representations: the agnostic parse map and the agnostic person image.

Pure functions on numpy arrays, written from the algorithm description in
`../shared/research/vitonhd-contract.md` (the "contract"), §1.6, §1.7, §2.3, §2.4:

- `parse_agnostic`: `image-parse-agnostic-v3.2/` (§1.6 = §2.3): arm labels near the arm skeleton,
  the upper clothes (5, 6, 7) and torso-skin (10) become background.
- `image_agnostic`: `agnostic-v3.2/`, in one of two recipes: "vitonhd" (§1.7, r = 20) or
  "hrviton" (§2.4, r scales with the shoulder width, arm restore).
- `check_agnostic_keypoints`: the validation the official code lacks (§0.7, §5).

Every shape is rasterised with PIL ImageDraw into a binary `L` mask (no anti-aliasing), so filling
the mask with one colour is the same as drawing that colour onto the image as the official code does.
Keypoints are raw pixel coordinates of the image (§0.3); a joint at exactly (0, 0) is missing (§1.5).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from vitonhd_models.contract import (
    AGNOSTIC_REQUIRED_KEYPOINTS,
    BODY25_COUNT,
    HEAD_LABELS,
    LOWER_BODY_LABELS,
    PARSE_AGNOSTIC_REMOVED_LABELS,
    Body25,
    Cihp,
    keypoint_missing,
)
from vitonhd_models.errors import MISSING_KEYPOINTS, ZERO_HIP_WIDTH, ItemError

RECIPE_HRVITON = "hrviton"  # contract §2.4: HR-VITON cp_dataset.py:get_agnostic
RECIPE_VITONHD = "vitonhd"  # contract §1.7: VITON-HD datasets.py:get_img_agnostic
AGNOSTIC_RECIPES = (RECIPE_HRVITON, RECIPE_VITONHD)

# Below this hip width (px) the hip normalisation divides by ~0. Our choice: the contract (§0.7)
# names only the exact-zero case; anything under a pixel is a detection failure, not a pose.
MIN_HIP_WIDTH_PX = 1.0

_MASK_ON = 255  # white in an `L` mask
_MASK_OFF = 0  # black in an `L` mask

# ---- Parse agnostic (contract §1.6 / §2.3) -------------------------------------------------------
R_PARSE = 10  # contract §1.6: r = 10
PARSE_ARM_LINE_WIDTH = R_PARSE * 10  # contract §1.6: line width r*10 = 100 px
PARSE_JOINT_RADIUS = R_PARSE * 15  # contract §1.6: circle radius r*15 = 150 at every non-last joint
PARSE_WRIST_RADIUS = R_PARSE * 4  # contract §1.6: circle radius r*4 = 40 at the chain's last joint
# contract §1.6: (arm label, keypoint chain); each chain starts at the opposite shoulder.
PARSE_ARM_CHAINS = (
    (Cihp.LEFT_ARM, (Body25.R_SHOULDER, Body25.L_SHOULDER, Body25.L_ELBOW, Body25.L_WRIST)),
    (Cihp.RIGHT_ARM, (Body25.L_SHOULDER, Body25.R_SHOULDER, Body25.R_ELBOW, Body25.R_WRIST)),
)

# ---- Agnostic image, shared by both recipes (contract §1.7, §2.4) --------------------------------
GRAY = (128, 128, 128)  # contract §1.7: PIL 'gray' = RGB (128, 128, 128)
# Shape sizes are multiples of the recipe's r; the _R suffix means "times r".
TORSO_HIP_ELLIPSE_HALF_WIDTH_R = 3  # contract §1.7 step 4 / §2.4 step 1: ellipse +-3r at 9 and 12
TORSO_HIP_ELLIPSE_HALF_HEIGHT_R = 6  # contract §1.7 step 4 / §2.4 step 1: ellipse +-6r at 9 and 12
TORSO_SIDE_LINE_WIDTH_R = 6  # contract §1.7 step 4 / §2.4 step 1: lines 2-9 and 5-12, width 6r
TORSO_HIP_LINE_WIDTH_R = 12  # contract §1.7 step 4 / §2.4 step 1: line 9-12, width 12r
ARM_SEGMENT_WIDTH_R = 10  # contract §1.7 step 3 / §2.4 step 3: segment lines, width 10r
ARM_JOINT_RADIUS_R = 5  # contract §1.7 step 3 / §2.4 step 3: circle 5r at each segment's end
# contract §1.7 step 3 / §2.4 step 3: segments (i-1 -> i) for i in [3, 4, 6, 7], zero-checked.
ARM_SEGMENTS = (
    (Body25.R_SHOULDER, Body25.R_ELBOW),
    (Body25.R_ELBOW, Body25.R_WRIST),
    (Body25.L_SHOULDER, Body25.L_ELBOW),
    (Body25.L_ELBOW, Body25.L_WRIST),
)
# contract §1.7 step 4 / §2.4 step 1: torso polygon [2, 5, 12, 9].
TORSO_POLYGON = (Body25.R_SHOULDER, Body25.L_SHOULDER, Body25.L_HIP, Body25.R_HIP)
# contract §1.7 step 4 / §2.4 step 1: torso side lines 2-9 and 5-12.
TORSO_SIDE_LINES = ((Body25.R_SHOULDER, Body25.R_HIP), (Body25.L_SHOULDER, Body25.L_HIP))

# ---- Agnostic image, VITON-HD recipe (contract §1.7) ---------------------------------------------
VITONHD_R = 20  # contract §1.7: r = 20, fixed
VITONHD_SHOULDER_LINE_WIDTH_R = 10  # contract §1.7 step 3: line 2->5, width r*10 = 200
VITONHD_SHOULDER_RADIUS_R = 5  # contract §1.7 step 3: circles r*5 = 100 at 2 and 5
VITONHD_NECK_HALF_SIZE_R = 7  # contract §1.7 step 5: square +-r*7 = +-140 around keypoint 1

# ---- Agnostic image, HR-VITON recipe (contract §2.4) ---------------------------------------------
HRVITON_R_SHOULDER_DIVISOR = 16  # contract §2.4: r = int(shoulder_width / 16) + 1
HRVITON_SHOULDER_LINE_WIDTH_R = 12  # contract §2.4 step 3: line 2->5, width 12r
HRVITON_SHOULDER_ELLIPSE_HALF_WIDTH_R = 5  # contract §2.4 steps 3, 4: ellipse +-5r at the shoulders
HRVITON_SHOULDER_ELLIPSE_HALF_HEIGHT_R = 6  # contract §2.4 steps 3, 4: ellipse +-6r at the shoulders
HRVITON_NECK_HALF_WIDTH_R = 5  # contract §2.4 step 2: rectangle x-5r .. x+5r
HRVITON_NECK_HEIGHT_R = 9  # contract §2.4 step 2: rectangle y-9r .. y (above keypoint 1 only)
HRVITON_ARM_RESTORE_END_RADIUS_R = 4  # contract §2.4 step 4: circle 4r at the last drawn point
# contract §2.4 step 4: (arm label, keypoint chain) for the arm restore.
HRVITON_ARM_RESTORE_CHAINS = (
    (Cihp.LEFT_ARM, (Body25.L_SHOULDER, Body25.L_ELBOW, Body25.L_WRIST)),
    (Cihp.RIGHT_ARM, (Body25.R_SHOULDER, Body25.R_ELBOW, Body25.R_WRIST)),
)

Point = tuple[float, float]


# ---- Validation ----------------------------------------------------------------------------------


def _pose_xy(keypoints_body25: np.ndarray) -> np.ndarray:
    """A float64 (25, 2) copy of the x, y columns; the confidence column, if any, is dropped (§1.5)."""
    keypoints = np.asarray(keypoints_body25)
    if keypoints.ndim != 2 or keypoints.shape[0] != BODY25_COUNT or keypoints.shape[1] not in (2, 3):
        raise ValueError(f"keypoints_body25 must have shape (25, 2) or (25, 3), got {keypoints.shape}")
    return np.array(keypoints[:, :2], dtype=np.float64, copy=True)


def check_agnostic_keypoints(keypoints_body25: np.ndarray) -> None:
    """Raise `ItemError` when the pose cannot anchor the agnostic masks (contract §0.7, §5).

    MISSING_KEYPOINTS when any of neck (1), shoulders (2, 5) or hips (9, 12) is (0, 0) or not finite
    (the official code would anchor the masks at the image origin); ZERO_HIP_WIDTH when the hips are
    less than `MIN_HIP_WIDTH_PX` apart (the hip normalisation divides by the hip width).
    """
    pose = _pose_xy(keypoints_body25)
    missing = [
        joint
        for joint in AGNOSTIC_REQUIRED_KEYPOINTS
        if keypoint_missing(pose[joint]) or not np.all(np.isfinite(pose[joint]))
    ]
    if missing:
        names = ", ".join(f"{Body25(joint).name} ({int(joint)})" for joint in missing)
        raise ItemError(MISSING_KEYPOINTS, f"keypoints the agnostic masks need are missing: {names}")
    hip_width = float(np.linalg.norm(pose[Body25.L_HIP] - pose[Body25.R_HIP]))
    if hip_width < MIN_HIP_WIDTH_PX:
        raise ItemError(
            ZERO_HIP_WIDTH,
            f"hips R_HIP (9) and L_HIP (12) are {hip_width:.3g} px apart (need >= {MIN_HIP_WIDTH_PX} px)",
        )


# ---- Drawing helpers (binary `L` masks) ----------------------------------------------------------


def _xy(point: np.ndarray) -> Point:
    return (float(point[0]), float(point[1]))


def _line(draw: ImageDraw.ImageDraw, a: np.ndarray, b: np.ndarray, width: int, fill: int) -> None:
    draw.line([_xy(a), _xy(b)], fill=fill, width=int(width))


def _ellipse(
    draw: ImageDraw.ImageDraw, center: np.ndarray, half_width: float, half_height: float, fill: int
) -> None:
    x, y = _xy(center)
    draw.ellipse((x - half_width, y - half_height, x + half_width, y + half_height), fill=fill, outline=fill)


def _circle(draw: ImageDraw.ImageDraw, center: np.ndarray, radius: float, fill: int) -> None:
    """A filled circle of `radius` at `center`: the ellipse box (x-R, y-R, x+R, y+R)."""
    _ellipse(draw, center, radius, radius, fill)


def _new_mask(height: int, width: int, fill: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    mask = Image.new("L", (width, height), fill)
    return mask, ImageDraw.Draw(mask)


def _on(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) == _MASK_ON


# ---- Parse agnostic ------------------------------------------------------------------------------


def parse_agnostic(parse_labels: np.ndarray, keypoints_body25: np.ndarray) -> np.ndarray:
    """The agnostic parse map of contract §1.6 (= §2.3, `image-parse-agnostic-v3.2/`).

    For each arm label and its chain (`PARSE_ARM_CHAINS`), a mask of width-100 lines along the chain
    with a radius-150 circle at each joint (radius 40 at the wrist) is drawn; a segment with a (0, 0)
    end is skipped and the chain's previous joint stays where it was. Arm pixels of that label inside
    the mask become 0. Then every upper-clothes (5, 6, 7) and torso-skin (10) pixel becomes 0.

    Does not validate the anchors (the official algorithm only needs its zero-guarded chains); callers
    run `check_agnostic_keypoints`. Returns a new (H, W) uint8 array; the input is not modified.
    """
    parse = np.asarray(parse_labels)
    if parse.ndim != 2:
        raise ValueError(f"parse_labels must be (H, W), got shape {parse.shape}")
    pose = _pose_xy(keypoints_body25)
    height, width = parse.shape
    agnostic = np.array(parse, dtype=np.uint8, copy=True)

    for arm_label, chain in PARSE_ARM_CHAINS:
        mask, draw = _new_mask(height, width, _MASK_OFF)
        previous = chain[0]
        for joint in chain[1:]:
            if keypoint_missing(pose[previous]) or keypoint_missing(pose[joint]):
                continue  # contract §1.6: skip without updating the previous joint
            _line(draw, pose[previous], pose[joint], PARSE_ARM_LINE_WIDTH, _MASK_ON)
            radius = PARSE_WRIST_RADIUS if joint == chain[-1] else PARSE_JOINT_RADIUS
            _circle(draw, pose[joint], radius, _MASK_ON)
            previous = joint
        agnostic[_on(mask) & (parse == arm_label)] = Cihp.BACKGROUND

    agnostic[np.isin(parse, PARSE_AGNOSTIC_REMOVED_LABELS)] = Cihp.BACKGROUND
    return agnostic


# ---- Agnostic image ------------------------------------------------------------------------------


def _normalise_hips(pose: np.ndarray) -> np.ndarray:
    """Contract §1.7 step 2, on a copy: the hip segment gets the shoulder width, same midpoint."""
    pose = pose.copy()
    shoulder_width = np.linalg.norm(pose[Body25.L_SHOULDER] - pose[Body25.R_SHOULDER])
    hip_width = np.linalg.norm(pose[Body25.L_HIP] - pose[Body25.R_HIP])
    middle = (pose[Body25.R_HIP] + pose[Body25.L_HIP]) / 2
    for hip in (Body25.R_HIP, Body25.L_HIP):
        pose[hip] = middle + (pose[hip] - middle) / hip_width * shoulder_width
    return pose


def _shoulder_width(pose: np.ndarray) -> float:
    return float(np.linalg.norm(pose[Body25.L_SHOULDER] - pose[Body25.R_SHOULDER]))


def _hrviton_r(pose: np.ndarray) -> int:
    return int(_shoulder_width(pose) / HRVITON_R_SHOULDER_DIVISOR) + 1


def _draw_arm_segments(draw: ImageDraw.ImageDraw, pose: np.ndarray, r: int, fill: int) -> None:
    """Contract §1.7 step 3 / §2.4 step 3: zero-checked segments 2-3-4, 5-6-7 with 5r joint circles."""
    for start, end in ARM_SEGMENTS:
        if keypoint_missing(pose[start]) or keypoint_missing(pose[end]):
            continue
        _line(draw, pose[start], pose[end], ARM_SEGMENT_WIDTH_R * r, fill)
        _circle(draw, pose[end], ARM_JOINT_RADIUS_R * r, fill)


def _draw_torso(draw: ImageDraw.ImageDraw, pose: np.ndarray, r: int, fill: int) -> None:
    """Contract §1.7 step 4 / §2.4 step 1 (same shapes in both recipes)."""
    for hip in (Body25.R_HIP, Body25.L_HIP):
        _ellipse(
            draw, pose[hip], TORSO_HIP_ELLIPSE_HALF_WIDTH_R * r, TORSO_HIP_ELLIPSE_HALF_HEIGHT_R * r, fill
        )
    for start, end in TORSO_SIDE_LINES:
        _line(draw, pose[start], pose[end], TORSO_SIDE_LINE_WIDTH_R * r, fill)
    _line(draw, pose[Body25.R_HIP], pose[Body25.L_HIP], TORSO_HIP_LINE_WIDTH_R * r, fill)
    draw.polygon([_xy(pose[joint]) for joint in TORSO_POLYGON], fill=fill, outline=fill)


def _vitonhd_gray_mask(pose: np.ndarray, height: int, width: int) -> np.ndarray:
    """Contract §1.7 steps 3-5: arms, torso, neck square, with r = 20."""
    r = VITONHD_R
    mask, draw = _new_mask(height, width, _MASK_OFF)
    shoulders = (Body25.R_SHOULDER, Body25.L_SHOULDER)
    _line(draw, pose[shoulders[0]], pose[shoulders[1]], VITONHD_SHOULDER_LINE_WIDTH_R * r, _MASK_ON)
    for shoulder in shoulders:
        _circle(draw, pose[shoulder], VITONHD_SHOULDER_RADIUS_R * r, _MASK_ON)
    _draw_arm_segments(draw, pose, r, _MASK_ON)
    _draw_torso(draw, pose, r, _MASK_ON)
    x, y = _xy(pose[Body25.NECK])
    half = VITONHD_NECK_HALF_SIZE_R * r
    draw.rectangle((x - half, y - half, x + half, y + half), fill=_MASK_ON, outline=_MASK_ON)
    return _on(mask)


def _hrviton_gray_mask(pose: np.ndarray, parse: np.ndarray, r: int) -> np.ndarray:
    """Contract §2.4 steps 1-4: torso, neck rectangle, arms, minus the arm restore."""
    height, width = parse.shape
    mask, draw = _new_mask(height, width, _MASK_OFF)
    _draw_torso(draw, pose, r, _MASK_ON)
    x, y = _xy(pose[Body25.NECK])
    half_width = HRVITON_NECK_HALF_WIDTH_R * r
    draw.rectangle(
        (x - half_width, y - HRVITON_NECK_HEIGHT_R * r, x + half_width, y), fill=_MASK_ON, outline=_MASK_ON
    )
    _line(draw, pose[Body25.R_SHOULDER], pose[Body25.L_SHOULDER], HRVITON_SHOULDER_LINE_WIDTH_R * r, _MASK_ON)
    for shoulder in (Body25.R_SHOULDER, Body25.L_SHOULDER):
        _ellipse(
            draw,
            pose[shoulder],
            HRVITON_SHOULDER_ELLIPSE_HALF_WIDTH_R * r,
            HRVITON_SHOULDER_ELLIPSE_HALF_HEIGHT_R * r,
            _MASK_ON,
        )
    _draw_arm_segments(draw, pose, r, _MASK_ON)
    gray = _on(mask)

    for arm_label, chain in HRVITON_ARM_RESTORE_CHAINS:
        gray &= ~(_hrviton_arm_restore_mask(pose, chain, r, height, width) & (parse == arm_label))
    return gray


def _hrviton_arm_restore_mask(
    pose: np.ndarray, chain: tuple[Body25, ...], r: int, height: int, width: int
) -> np.ndarray:
    """Contract §2.4 step 4: True (white) outside the arm skeleton zone of one arm."""
    mask, draw = _new_mask(height, width, _MASK_ON)
    _ellipse(
        draw,
        pose[chain[0]],
        HRVITON_SHOULDER_ELLIPSE_HALF_WIDTH_R * r,
        HRVITON_SHOULDER_ELLIPSE_HALF_HEIGHT_R * r,
        _MASK_OFF,
    )
    last_drawn = chain[0]
    for start, end in zip(chain[:-1], chain[1:]):
        if keypoint_missing(pose[start]) or keypoint_missing(pose[end]):
            continue
        _line(draw, pose[start], pose[end], ARM_SEGMENT_WIDTH_R * r, _MASK_OFF)
        if end != chain[-1]:
            _circle(draw, pose[end], ARM_JOINT_RADIUS_R * r, _MASK_OFF)
        last_drawn = end
    _circle(draw, pose[last_drawn], HRVITON_ARM_RESTORE_END_RADIUS_R * r, _MASK_OFF)
    return _on(mask)


def image_agnostic(
    image_rgb: np.ndarray,
    parse_labels: np.ndarray,
    keypoints_body25: np.ndarray,
    recipe: str = RECIPE_HRVITON,
) -> np.ndarray:
    """The clothing-agnostic person image (`agnostic-v3.2/`): torso, neck and arms grayed out.

    recipe "vitonhd": contract §1.7 (r = 20, shoulder line 10r, 5r circles, neck square +-7r).
    recipe "hrviton": contract §2.4 (r = int(shoulder_width / 16) + 1, shoulder line 12r, neck
    rectangle 9r above keypoint 1, then arm pixels outside the arm skeleton zone are restored).
    Both normalise the hips to the shoulder width on a copy of the keypoints, then put the original
    pixels back where the parse is head {4, 13} or lower body {9, 12, 16, 17, 18, 19}.

    Raises ItemError (via `check_agnostic_keypoints`) for an unusable pose, ValueError for an unknown
    recipe or mismatched shapes. Returns a new (H, W, 3) uint8 array; no input is modified.
    """
    if recipe not in AGNOSTIC_RECIPES:
        raise ValueError(f"unknown agnostic recipe {recipe!r}; expected one of {AGNOSTIC_RECIPES}")
    image = np.asarray(image_rgb)
    parse = np.asarray(parse_labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image_rgb must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if parse.shape != image.shape[:2]:
        raise ValueError(f"parse_labels shape {parse.shape} does not match the image {image.shape[:2]}")
    check_agnostic_keypoints(keypoints_body25)

    pose = _normalise_hips(_pose_xy(keypoints_body25))
    height, width = parse.shape
    if recipe == RECIPE_VITONHD:
        gray = _vitonhd_gray_mask(pose, height, width)
    else:
        gray = _hrviton_gray_mask(pose, parse, _hrviton_r(pose))

    # Contract §1.7 step 6 / §2.4 step 5: head and lower body come back from the original image.
    gray &= ~np.isin(parse, HEAD_LABELS + LOWER_BODY_LABELS)
    agnostic = image.copy()
    agnostic[gray] = GRAY
    return agnostic
