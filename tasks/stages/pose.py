"""Pose: MediaPipe BlazePose landmarks mapped to OpenPose BODY_25, its JSON and its rendered skeleton.

Pure functions on numpy arrays plus `PoseEstimator`, a small wrapper around MediaPipe (no file I/O).

Decisions (peers.md §3 lists the choices the MediaPipe -> BODY_25 converters disagree on):
- Neck and MidHip are the midpoints of the shoulders / hips; their confidence is the min of the two parents.
- A joint below the visibility threshold, or outside the image, is OpenPose's "missing" value 0, 0, 0, so
  the agnostic masks never reach for a hallucinated wrist (contract §0 item 7, peers.md §3 point 3).
- Except the shoulders and hips, which the agnostic cannot do without: they are kept down to a lower
  threshold, their low visibility as the confidence, as OpenPose keeps them; a hip just below the bottom
  edge (a crop at the waist) is written on the last row (`place_joint`). A hip in the padding stays missing.
- A person the pose model misses gets a second look, on the image padded to a square (SECOND_LOOK_MARGIN).
- MediaPipe never sees a side over MAX_POSE_SIDE (past OpenCV's 32,767-pixel remap limit, or a 2 GiB square, it
  kills the process): a larger image, a source `fit=crop` searches, is shrunk first and the result scaled back.
- The small toes (20, 23), which MediaPipe lacks, are always 0, 0, 0 (never duplicated, never NaN).
- Coordinates are float pixels of the image the estimator was given (contract §0 item 3).
- Several people: the solutions pose graph returns one person per call, so `PoseEstimator` finds people
  one at a time (paint the found one over with the backdrop colour, run again), counts them, and keeps
  the biggest, most central one. It looks again only when the backdrop around the first one has edges
  that could be someone (`_backdrop_may_hold_others`): a studio photo costs one pass. (MediaPipe's face detector was tried for this and dropped: on a
  768x1024 image it missed one of two people in 8 of 24 test composites and its box sizes picked the
  smaller person in 3 more; tiling it fixed recall but raised a false face on a hand.)
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import Field

from tasks.records.config import Config
from tasks.stages.image_codec import encode_png
from tasks.stages.model_cache import ModelFile
from vitonhd_models.agnostic import TORSO_HIP_ELLIPSE_HALF_HEIGHT_R, VITONHD_R
from vitonhd_models.contract import (
    AGNOSTIC_REQUIRED_KEYPOINTS,
    BODY25_COUNT,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    OPENPOSE_JSON_VERSION,
    Body25,
)
from vitonhd_models.errors import NO_PERSON, ItemError
from vitonhd_models.openpose import check_body25

DEFAULT_VISIBILITY_THRESHOLD = 0.5  # joints MediaPipe sees less surely than this are OpenPose's 0, 0, 0
# The joints the agnostic masks are anchored on (contract §0 item 7; the neck is their midpoint) are kept down to
# this visibility: OpenPose keeps them with a low confidence too (0.38-0.49 for the hips of every photo in
# groundtruth/vitonhd), and without them the item is lost. On crops of the sample photos MediaPipe gives a hip at
# the lower edge 0.25-0.6, one up to 100 px past it 0.03-0.4, the hips of a head-and-shoulders crop 0.00-0.01.
DEFAULT_TORSO_VISIBILITY_THRESHOLD = 0.1


@dataclass(frozen=True)
class PoseResult:
    """What the pose stage knows about one 768x1024 person image.

    keypoints_body25: (25, 3) float32, x and y in pixels of the image, confidence 0..1; a missing
        joint is 0, 0, 0 (OpenPose convention, contract §1.5).
    landmarks_px: (33, 4) float32, MediaPipe's landmarks as x_px, y_px, z (MediaPipe's relative
        depth), visibility. Kept for the geometric parser.
    segmentation: (H, W) float32 person probability 0..1 from the pose model, or None.
    persons_detected: how many people the image holds (the pose is of the chosen one).
    other_person_scale: the biggest other person's landmark box area over the chosen one's (0 alone).
    """

    keypoints_body25: np.ndarray
    landmarks_px: np.ndarray
    segmentation: np.ndarray | None
    persons_detected: int
    other_person_scale: float = 0.0


# ---------------------------------------------------------------------------------------------------
# MediaPipe 33 -> BODY_25
# ---------------------------------------------------------------------------------------------------

# MediaPipe Pose landmark ids (google/mediapipe docs/solutions/pose.md, "Pose Landmark Model").
# "Left"/"right" are the person's own sides, as in OpenPose.
MP_LANDMARK_COUNT = 33
MP_NOSE = 0
MP_LEFT_EYE = 2
MP_RIGHT_EYE = 5
MP_LEFT_EAR = 7
MP_RIGHT_EAR = 8
MP_LEFT_SHOULDER = 11
MP_RIGHT_SHOULDER = 12
MP_LEFT_ELBOW = 13
MP_RIGHT_ELBOW = 14
MP_LEFT_WRIST = 15
MP_RIGHT_WRIST = 16
MP_LEFT_PINKY = 17
MP_RIGHT_PINKY = 18
MP_LEFT_INDEX = 19
MP_RIGHT_INDEX = 20
MP_LEFT_THUMB = 21
MP_RIGHT_THUMB = 22
MP_LEFT_HIP = 23
MP_RIGHT_HIP = 24
MP_LEFT_KNEE = 25
MP_RIGHT_KNEE = 26
MP_LEFT_ANKLE = 27
MP_RIGHT_ANKLE = 28
MP_LEFT_HEEL = 29
MP_RIGHT_HEEL = 30
MP_LEFT_FOOT_INDEX = 31  # tip of the foot: OpenPose's big toe
MP_RIGHT_FOOT_INDEX = 32

# BODY_25 joint <- the MediaPipe landmark it copies (peers.md §3: the map all three converters share).
BODY25_FROM_MEDIAPIPE: dict[Body25, int] = {
    Body25.NOSE: MP_NOSE,
    Body25.R_SHOULDER: MP_RIGHT_SHOULDER,
    Body25.R_ELBOW: MP_RIGHT_ELBOW,
    Body25.R_WRIST: MP_RIGHT_WRIST,
    Body25.L_SHOULDER: MP_LEFT_SHOULDER,
    Body25.L_ELBOW: MP_LEFT_ELBOW,
    Body25.L_WRIST: MP_LEFT_WRIST,
    Body25.R_HIP: MP_RIGHT_HIP,
    Body25.R_KNEE: MP_RIGHT_KNEE,
    Body25.R_ANKLE: MP_RIGHT_ANKLE,
    Body25.L_HIP: MP_LEFT_HIP,
    Body25.L_KNEE: MP_LEFT_KNEE,
    Body25.L_ANKLE: MP_LEFT_ANKLE,
    Body25.R_EYE: MP_RIGHT_EYE,
    Body25.L_EYE: MP_LEFT_EYE,
    Body25.R_EAR: MP_RIGHT_EAR,
    Body25.L_EAR: MP_LEFT_EAR,
    Body25.L_BIG_TOE: MP_LEFT_FOOT_INDEX,
    Body25.L_HEEL: MP_LEFT_HEEL,
    Body25.R_BIG_TOE: MP_RIGHT_FOOT_INDEX,
    Body25.R_HEEL: MP_RIGHT_HEEL,
}

# BODY_25 joints MediaPipe has no landmark for, synthesised as the midpoint of two landmarks.
BODY25_MIDPOINTS: dict[Body25, tuple[int, int]] = {
    Body25.NECK: (MP_LEFT_SHOULDER, MP_RIGHT_SHOULDER),
    Body25.MID_HIP: (MP_LEFT_HIP, MP_RIGHT_HIP),
}
BODY25_FROM_LANDMARK = {mp_index: joint for joint, mp_index in BODY25_FROM_MEDIAPIPE.items()}

TORSO_JOINTS = frozenset(AGNOSTIC_REQUIRED_KEYPOINTS) & frozenset(BODY25_FROM_MEDIAPIPE)  # shoulders and hips
HIPS = (Body25.R_HIP, Body25.L_HIP)
# A hip MediaPipe puts just below the photo's bottom edge (a crop at the waist) is moved onto the last row, up to
# this fraction of the image height below it: 120 px at 1024, the half-height of the agnostic's hip ellipse
# (contract §1.7 step 4, 6r with r = 20), so the gray drawn at the moved hip still reaches where MediaPipe put
# it. Further down there is no usable torso in the photo (a head-and-shoulders portrait): the hip is missing.
HIP_BELOW_FRAME_MARGIN = TORSO_HIP_ELLIPSE_HALF_HEIGHT_R * VITONHD_R / IMAGE_HEIGHT


def _inside(x: float, y: float, width: int, height: int) -> bool:
    return bool(np.isfinite(x) and np.isfinite(y) and 0.0 <= x < width and 0.0 <= y < height)


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (MP_LANDMARK_COUNT, 4):
        raise ValueError(f"landmarks must be ({MP_LANDMARK_COUNT}, 4) x_px, y_px, z, visibility; got {lm.shape}")
    return lm


def place_joint(
    joint: Body25, x: float, y: float, width: int, height: int, valid_box: tuple[float, float, float, float]
) -> tuple[float, float, float] | None:
    """Where a landmark goes in the BODY_25 JSON: (x, y, how much of its visibility it keeps), or None (missing).

    Inside the image and the photo (`valid_box`): where it is, all of it. A hip below the image's bottom edge,
    by at most HIP_BELOW_FRAME_MARGIN of the height, when the photo reaches that edge: on the last row, keeping
    1 - distance / margin (OpenPose can only place a joint on a pixel it sees). Anything else is missing, a hip
    in the padding below a padded photo included: the photo ends there, the padding is ours.
    """
    x_min, y_min, x_max, y_max = valid_box
    if not (np.isfinite(x) and np.isfinite(y) and max(0.0, x_min) <= x < min(float(width), x_max)):
        return None
    if y_min <= y < y_max and _inside(x, y, width, height):
        return x, y, 1.0
    below = y - (height - 1)
    margin = HIP_BELOW_FRAME_MARGIN * height
    if joint in HIPS and y >= height and y_max >= height and below <= margin:
        return x, float(height - 1), 1.0 - below / margin
    return None


def mediapipe_to_body25(
    landmarks: np.ndarray,
    width: int,
    height: int,
    visibility_threshold: float = DEFAULT_VISIBILITY_THRESHOLD,
    valid_box: tuple[float, float, float, float] | None = None,
    torso_visibility_threshold: float = DEFAULT_TORSO_VISIBILITY_THRESHOLD,
) -> np.ndarray:
    """MediaPipe's 33 landmarks (x_px, y_px, z, visibility) -> OpenPose BODY_25 (25, 3) float32.

    Confidence is MediaPipe's visibility. A joint whose visibility is below `visibility_threshold` is 0, 0, 0,
    except the shoulders and hips (TORSO_JOINTS, what the agnostic needs), kept down to
    `torso_visibility_threshold` (never a stricter one) with their low visibility as the confidence. Where a
    joint goes, or that it is missing because it lies outside the image, is `place_joint`'s rule; a hip it
    moves onto the last row keeps part of its visibility (never less than the threshold that kept it). Neck /
    MidHip are the midpoints of the shoulders / hips as written, with the smaller of the two confidences, and
    0, 0, 0 when either is missing. The small toes are always 0, 0, 0.

    `valid_box` (x0, y0, x1, y1), when given, is where the photo itself lies on a padded canvas: a
    joint outside it is 0, 0, 0 too, so a hip guessed into the padding below a portrait is "missing".
    """
    lm = _check_landmarks(landmarks)
    out = np.zeros((BODY25_COUNT, 3), dtype=np.float32)
    box = valid_box if valid_box is not None else (0.0, 0.0, float(width), float(height))
    written: dict[Body25, tuple[float, float, float]] = {}
    for joint, mp_index in BODY25_FROM_MEDIAPIPE.items():
        x, y, _, visibility = lm[mp_index]
        threshold = visibility_threshold
        if joint in TORSO_JOINTS:
            threshold = min(torso_visibility_threshold, visibility_threshold)
        placed = place_joint(joint, x, y, width, height, box) if visibility >= threshold else None
        if placed is not None:
            x, y, kept = placed
            written[joint] = (x, y, min(max(visibility * kept, threshold, 0.0), 1.0))
    for joint, parents in BODY25_MIDPOINTS.items():
        a, b = (written.get(BODY25_FROM_LANDMARK[mp_index]) for mp_index in parents)
        if a is not None and b is not None:
            written[joint] = ((a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0, min(a[2], b[2]))
    for joint, keypoint in written.items():
        out[joint] = keypoint
    # The small toes (L_SMALL_TOE, R_SMALL_TOE): no MediaPipe landmark, so they stay 0, 0, 0.
    return out


# ---------------------------------------------------------------------------------------------------
# OpenPose JSON (contract §1.5)
# ---------------------------------------------------------------------------------------------------

_JSON_DECIMALS = 4


def openpose_json(keypoints_body25: np.ndarray) -> dict:
    """One person's BODY_25 keypoints as an OpenPose 1.3 `_keypoints.json` document (plain Python types)."""
    kp = check_body25(keypoints_body25)
    flat = [round(float(v), _JSON_DECIMALS) for v in kp.reshape(-1)]
    person = {
        "person_id": [-1],
        "pose_keypoints_2d": flat,
        "face_keypoints_2d": [],
        "hand_left_keypoints_2d": [],
        "hand_right_keypoints_2d": [],
        "pose_keypoints_3d": [],
        "face_keypoints_3d": [],
        "hand_left_keypoints_3d": [],
        "hand_right_keypoints_3d": [],
    }
    return {"version": OPENPOSE_JSON_VERSION, "people": [person]}


# ---------------------------------------------------------------------------------------------------
# Rendered skeleton (`openpose_img/*_rendered.png`)
# ---------------------------------------------------------------------------------------------------

# Source: CMU-Perceptual-Computing-Lab/openpose include/openpose/pose/poseParametersRender.hpp,
# POSE_BODY_25_PAIRS_RENDER_GPU (the limbs drawn, in drawing order).
BODY25_LIMB_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 8), (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (10, 11), (8, 12), (12, 13),
    (13, 14), (1, 0), (0, 15), (15, 17), (0, 16), (16, 18), (14, 19), (19, 20), (14, 21), (11, 22),
    (22, 23), (11, 24),
)  # fmt: skip

# Source: same file, POSE_BODY_25_COLORS_RENDER_GPU: one colour per keypoint, in R, G, B order
# (src/openpose/utilities/keypoint.cpp renderKeypointsCpu builds cv::Scalar{c[i+2], c[i+1], c[i]} for
# its BGR frame). A keypoint's circle takes its own colour; a limb takes the colour of its *second*
# keypoint (`colorIndex = pairs[pair+1]*3`, in both the CPU and the GPU renderer).
BODY25_COLORS_RGB: tuple[tuple[int, int, int], ...] = (
    (255, 0, 85), (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (255, 0, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (255, 0, 170), (170, 0, 255), (255, 0, 255), (85, 0, 255), (0, 0, 255), (0, 0, 255),
    (0, 0, 255), (0, 255, 255), (0, 255, 255), (0, 255, 255),
)  # fmt: skip

# Source: openpose src/openpose/pose/renderPose.cpp renderPoseKeypointsCpu, and the `render_threshold`
# flag default (include/openpose/flags.hpp).
RENDER_THICKNESS_CIRCLE_RATIO = 1.0 / 75.0
RENDER_THICKNESS_LINE_RATIO_WRT_CIRCLE = 0.75
RENDER_THRESHOLD = 0.05  # a keypoint is drawn when its confidence is above this
RENDER_RECTANGLE_THRESHOLD = 0.1  # keypoints that size the person (keypoint.cpp, thresholdRectangle)


def _round_px(value: float) -> int:
    # OpenPose's positiveIntRound: int(v + 0.5).
    return int(value + 0.5)


def render_body25(
    keypoints_body25: np.ndarray, width: int = IMAGE_WIDTH, height: int = IMAGE_HEIGHT
) -> np.ndarray:
    """The BODY_25 skeleton on black, as OpenPose's CPU renderer draws it with `--disable_blending`.

    Returns (height, width, 3) uint8 RGB. Follows openpose `renderKeypointsCpu`: the line/circle size
    scales with the person's keypoint box relative to the image; limbs are 8-connected `cv::line`s
    coloured by their second keypoint, then every keypoint gets a circle in its own colour. Joints with
    confidence <= RENDER_THRESHOLD (our missing joints have 0) are skipped with every limb that touches
    them. Like OpenPose, nothing is drawn when the confident keypoints span no area.
    """
    kp = check_body25(keypoints_body25)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)

    sized = kp[kp[:, 2] > RENDER_RECTANGLE_THRESHOLD]
    if len(sized) == 0:
        return canvas
    box_w = float(sized[:, 0].max() - sized[:, 0].min())
    box_h = float(sized[:, 1].max() - sized[:, 1].min())
    if box_w * box_h <= 0:
        return canvas
    ratio_areas = min(1.0, max(box_w / width, box_h / height))
    thickness_ratio = max(_round_px(math.sqrt(width * height) * RENDER_THICKNESS_CIRCLE_RATIO * ratio_areas), 2)
    thickness_circle = max(1, thickness_ratio if ratio_areas > 0.05 else -1)
    thickness_line = max(1, _round_px(thickness_ratio * RENDER_THICKNESS_LINE_RATIO_WRT_CIRCLE))
    radius = thickness_ratio // 2

    drawn = kp[:, 2] > RENDER_THRESHOLD
    points = [(_round_px(float(x)), _round_px(float(y))) for x, y in kp[:, :2]]
    for a, b in BODY25_LIMB_PAIRS:
        if drawn[a] and drawn[b]:
            cv2.line(canvas, points[a], points[b], BODY25_COLORS_RGB[b], thickness_line, cv2.LINE_8)
    for part in range(BODY25_COUNT):
        if drawn[part]:
            cv2.circle(canvas, points[part], radius, BODY25_COLORS_RGB[part], thickness_circle, cv2.LINE_8)
    return canvas


# ---------------------------------------------------------------------------------------------------
# Choosing one person among several
# ---------------------------------------------------------------------------------------------------

# How much being off-centre costs: a box in a corner scores (1 - CENTRE_WEIGHT) of the same box centred.
CENTRE_WEIGHT = 0.5
# People are found one at a time (the solutions graph returns one pose): after each, the person is painted
# over with the background colour and the pose model runs again, up to this many people.
MAX_PERSONS = 8  # people counted in a group photo (one more MediaPipe pass each, for group photos only)
# Painting a person over: their pose mask above this, grown by this fraction of the image's shorter side
# (hair and edges); without a mask, their landmark box grown by ERASE_BOX_MARGIN of its size.
ERASE_MASK_THRESHOLD = 0.2
ERASE_GROW_FRACTION = 0.03
ERASE_BOX_MARGIN = 0.15
# A later pose counts as another person only with both shoulders visible, and at most this fraction of
# its visible landmarks on someone already painted over (a left-over of them rather than a new person).
MAX_OVERLAP_WITH_FOUND = 0.5
# Looking for another person costs one more pass of the pose detector (a quarter of a full pass whatever
# the image size: it sees 224x224). Nobody else can stand on a plain backdrop, so the look runs only when
# something outside the found person has edges: a blob of strong gradients, at a quarter of the size, at
# least MIN_OTHER_EXTENT of the image's height or width (the detector finds no smaller person at 224x224).
LOOK_SCALE = 4
LOOK_GRADIENT = 4.0  # CIE L units per pixel at that scale: a wall's shading is < 1, an edge of a face > 10
LOOK_REGION_THRESHOLD = 0.1  # the found person, for the look: their mask above this, grown as for painting
MIN_OTHER_EXTENT = 0.1
# Tasks backend: how many poses PoseLandmarker may return (it finds several people itself).
TASKS_MAX_POSES = MAX_PERSONS
# A person the pose model misses gets a second look, on the image padded to a square with this margin (of its
# longer side) all round, in the backdrop colour. MediaPipe crops its landmark model's input around the body the
# detector found, a square with a margin around it, and fills what lies outside the image by repeating the edge
# pixels (ImageToTensorCalculator's default border); for a person filling a 3:4 frame that crop reaches well
# past both sides, and the landmark model's "a pose is present" score can fall under the 0.5 the graph asks:
# 0.37 on VITON-HD's 00802_00, 0.90 padded to a square, 0.36 downscaled to half. Only a miss pays for it.
SECOND_LOOK_MARGIN = 0.1
# MediaPipe never sees an image with a side longer than this: a larger one is shrunk first (`pose_input_size`)
# and what is found is scaled back to its pixels. `fit=crop` searches the decoded source for the person, at any
# size the config admits (64 MP: 24000x200 and 200x40000 alike), and past a limit MediaPipe kills the process
# rather than fail: its graph warps the image into the models' inputs with OpenCV's remap, which aborts past
# 32,767 pixels a side (200x40000 did), and the second look's square, 1.2 times the longer side, segfaults once it
# passes 2 GiB (24000x200 did: a 28800x28800 square; 24000x24000 runs). The detector sees 224x224 and the landmark
# model 256x256 whatever the input, so a person search loses nothing at 4096, and the second look's square stays
# under 5,000 px (72 MB). An image within the limit (every canvas, ordinary photos) is passed on untouched.
MAX_POSE_SIDE = 4096

Box = tuple[int, int, int, int]


def pose_input_size(width: int, height: int) -> tuple[int, int]:
    """The (width, height) MediaPipe is given for an image of this size: the same within MAX_POSE_SIDE, else
    shrunk, aspect ratio kept, so the longer side is MAX_POSE_SIDE (each side at least one pixel)."""
    longer = max(width, height)
    if longer <= MAX_POSE_SIDE:
        return width, height
    return (max(1, (width * MAX_POSE_SIDE + longer // 2) // longer),
            max(1, (height * MAX_POSE_SIDE + longer // 2) // longer))


def shrink_for_pose(image: np.ndarray) -> np.ndarray:
    """The image as MediaPipe may see it (`pose_input_size`): the array itself when it is within the limit."""
    height, width = image.shape[:2]
    size = pose_input_size(width, height)
    if size == (width, height):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def scale_box(box: Box, from_size: tuple[int, int], to_size: tuple[int, int]) -> Box:
    """A pixel box (x1/y1 exclusive) on an image of `from_size` (width, height), on the same image at `to_size`:
    each edge moved outward to a whole pixel, so the box holds all it held (the same box at the same size)."""
    (from_w, from_h), (to_w, to_h) = from_size, to_size
    x0, y0, x1, y1 = (int(v) for v in box)
    return (x0 * to_w // from_w, y0 * to_h // from_h, -(-x1 * to_w // from_w), -(-y1 * to_h // from_h))


def enlarge_pose(
    landmarks: np.ndarray, segmentation: np.ndarray | None, from_size: tuple[int, int], to_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """A pose found on the image shrunk to `from_size` (width, height), in the pixels of the image at `to_size`:
    landmarks scaled per axis (z is relative to the width, so it stays), the mask resized."""
    (from_w, from_h), (to_w, to_h) = from_size, to_size
    lm = np.array(landmarks, dtype=np.float32, copy=True)
    lm[:, 0] *= to_w / from_w
    lm[:, 1] *= to_h / from_h
    if segmentation is not None:
        segmentation = cv2.resize(np.asarray(segmentation, dtype=np.float32), (to_w, to_h),
                                  interpolation=cv2.INTER_LINEAR)
    return lm, segmentation


def person_score(box: Box, width: int, height: int) -> float:
    """Bigger and more central is better: sqrt(relative area) x (1 - CENTRE_WEIGHT x off-centre)."""
    x0, y0, x1, y1 = box
    area = max(0, x1 - x0) * max(0, y1 - y0)
    size = math.sqrt(area / float(width * height))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    off_centre = math.hypot(cx - width / 2.0, cy - height / 2.0) / math.hypot(width / 2.0, height / 2.0)
    return size * (1.0 - CENTRE_WEIGHT * min(off_centre, 1.0))


def choose_person(boxes: list[Box], width: int, height: int) -> int:
    """Index of the (body) box of the person to keep: the best `person_score`."""
    if not boxes:
        raise ValueError("no boxes to choose from")
    scores = [person_score(box, width, height) for box in boxes]
    return int(np.argmax(scores))


def _landmark_box(landmarks: np.ndarray, width: int, height: int, threshold: float) -> Box | None:
    lm = np.asarray(landmarks)
    keep = lm[:, 3] >= threshold
    if not np.any(keep):
        return None
    xs = np.clip(lm[keep, 0], 0, width - 1)
    ys = np.clip(lm[keep, 1], 0, height - 1)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_from_pose(
    result: PoseResult, width: int, height: int, visibility_threshold: float = DEFAULT_VISIBILITY_THRESHOLD
) -> Box | None:
    """(x0, y0, x1, y1) pixel box of the person, x1/y1 exclusive (so `image[y0:y1, x0:x1]` is the crop).

    The union of the visible landmarks (clipped to the image) and the parts of the segmentation mask
    (> 0.5) that hold at least one of those landmarks; other blobs (another person, a mirror) are left out.
    """
    landmark_box = _landmark_box(result.landmarks_px, width, height, visibility_threshold)
    if landmark_box is None:
        return None
    x0, y0, x1, y1 = landmark_box
    seg = result.segmentation
    if seg is not None and seg.shape == (height, width):
        mask = (seg > 0.5).astype(np.uint8)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        lm = result.landmarks_px
        visible = lm[:, 3] >= visibility_threshold
        xs = np.clip(lm[visible, 0], 0, width - 1).astype(int)
        ys = np.clip(lm[visible, 1], 0, height - 1).astype(int)
        for label in set(int(v) for v in labels[ys, xs]) - {0}:
            left, top, w, h = (int(v) for v in stats[label, :4])
            x0, y0 = min(x0, left), min(y0, top)
            x1, y1 = max(x1, left + w), max(y1, top + h)
    return x0, y0, x1, y1


# ---------------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------------


def _landmark_list_to_array(landmarks, width: int, height: int) -> np.ndarray:
    """MediaPipe normalised landmarks (solutions or tasks objects) -> (33, 4) x_px, y_px, z, visibility."""
    out = np.zeros((MP_LANDMARK_COUNT, 4), dtype=np.float32)
    for i, lm in enumerate(landmarks):
        if i >= MP_LANDMARK_COUNT:
            break
        visibility = getattr(lm, "visibility", None)
        out[i] = (lm.x * width, lm.y * height, lm.z, 0.0 if visibility is None else visibility)
    return out


def _check_image(image_rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image; got shape {image.shape}, dtype {image.dtype}")
    return np.ascontiguousarray(image)


def _border_colour(image: np.ndarray) -> np.ndarray:
    """The median colour of the image's outer rows and columns: the backdrop, in catalog photos."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(border, axis=0).astype(np.uint8)


def _erase_region(
    landmarks: np.ndarray, segmentation: np.ndarray | None, width: int, height: int, threshold: float
) -> np.ndarray:
    """Where one found person is, generously: (H, W) bool."""
    if segmentation is not None and np.any(segmentation > ERASE_MASK_THRESHOLD):
        grow = max(3, int(round(ERASE_GROW_FRACTION * min(width, height)))) | 1
        mask = (segmentation > ERASE_MASK_THRESHOLD).astype(np.uint8)
        return cv2.dilate(mask, np.ones((grow, grow), np.uint8)).astype(bool)
    region = np.zeros((height, width), dtype=bool)
    box = _landmark_box(landmarks, width, height, threshold)
    if box is not None:
        x0, y0, x1, y1 = box
        mx, my = ERASE_BOX_MARGIN * (x1 - x0), ERASE_BOX_MARGIN * (y1 - y0)
        region[max(0, int(y0 - my)) : int(y1 + my), max(0, int(x0 - mx)) : int(x1 + mx)] = True
    return region


def _backdrop_may_hold_others(image: np.ndarray, segmentation: np.ndarray | None) -> bool:
    """False when everything outside the found person (its pose mask) is plain backdrop: no blob of
    edges big enough to be someone else. True without a mask."""
    if segmentation is None:
        return True
    height, width = image.shape[:2]
    size = (max(1, width // LOOK_SCALE), max(1, height // LOOK_SCALE))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    person = cv2.resize(np.asarray(segmentation, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
    grow = 2 * max(1, int(round(ERASE_GROW_FRACTION * min(width, height) / LOOK_SCALE))) + 1
    found = cv2.dilate((person > LOOK_REGION_THRESHOLD).astype(np.uint8), np.ones((grow, grow), np.uint8))
    lightness = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)[:, :, 0].astype(np.float32) * (100.0 / 255.0)
    gradient = cv2.magnitude(cv2.Sobel(lightness, cv2.CV_32F, 1, 0, ksize=3),
                             cv2.Sobel(lightness, cv2.CV_32F, 0, 1, ksize=3)) / 8.0
    busy = ((gradient > LOOK_GRADIENT) & (found == 0)).astype(np.uint8)
    busy[:2], busy[-2:], busy[:, :2], busy[:, -2:] = 0, 0, 0, 0  # the frame's own edge is no one
    if not busy.any():
        return False
    busy = cv2.dilate(busy, np.ones((5, 5), np.uint8))  # the edges of one person into one blob
    _, _, stats, _ = cv2.connectedComponentsWithStats(busy, connectivity=8)
    extent = np.maximum(stats[1:, cv2.CC_STAT_HEIGHT] / size[1], stats[1:, cv2.CC_STAT_WIDTH] / size[0])
    return bool(np.any(extent >= MIN_OTHER_EXTENT))


def pad_to_square(image: np.ndarray, margin: float, colour: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The image centred on a square of `colour`, `margin` times its longer side bigger all round, and where
    its top-left corner lies on that square (x0, y0)."""
    height, width = image.shape[:2]
    side = int(round(max(height, width) * (1.0 + 2.0 * margin)))
    x0, y0 = (side - width) // 2, (side - height) // 2
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = colour
    canvas[y0 : y0 + height, x0 : x0 + width] = image
    return canvas, (x0, y0)


def unpad_pose(
    landmarks: np.ndarray, segmentation: np.ndarray | None, offset: tuple[int, int], canvas_width: int,
    width: int, height: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A pose found on `pad_to_square`'s canvas, back in the pixels of the image: landmarks shifted by the
    offset (z, relative to the width MediaPipe saw, rescaled to the image's), the mask cut back out."""
    x0, y0 = offset
    lm = np.array(landmarks, dtype=np.float32, copy=True)
    lm[:, 0] -= x0
    lm[:, 1] -= y0
    lm[:, 2] *= canvas_width / width
    if segmentation is not None:
        segmentation = np.ascontiguousarray(segmentation[y0 : y0 + height, x0 : x0 + width])
    return lm, segmentation


def _is_another_person(landmarks: np.ndarray, found_region: np.ndarray, threshold: float) -> bool:
    """A pose found after painting people over is a new person, not a left-over of one already found."""
    height, width = found_region.shape
    lm = np.asarray(landmarks)
    visible = (lm[:, 3] >= threshold) & (lm[:, 0] >= 0) & (lm[:, 0] < width) & (lm[:, 1] >= 0) & (lm[:, 1] < height)
    if not (visible[MP_LEFT_SHOULDER] and visible[MP_RIGHT_SHOULDER]):
        return False
    xs, ys = lm[visible, 0].astype(int), lm[visible, 1].astype(int)
    return float(found_region[ys, xs].mean()) <= MAX_OVERLAP_WITH_FOUND


class PoseEstimator:
    """MediaPipe pose of one chosen person per image, in pixel space, plus a people count.

    Default backend: the legacy `mediapipe.solutions.pose` graph (model_complexity=1, i.e. the bundled
    pose_landmark_full model; nothing is downloaded). It returns one person per call, so people are
    found one at a time: each found person is painted over with the backdrop colour and the model runs
    again (MAX_PERSONS at most). With `task_model_path`, MediaPipe Tasks `PoseLandmarker` from a local
    `.task` bundle instead, which returns several people in one call. Either way the pose kept is the
    biggest, most central person (`choose_person` on the landmark boxes).

    Not thread-safe: use one estimator per thread/process. Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        task_model_path: str | None = None,
        visibility_threshold: float = DEFAULT_VISIBILITY_THRESHOLD,
        segmentation: bool = True,
        torso_visibility_threshold: float = DEFAULT_TORSO_VISIBILITY_THRESHOLD,
    ):
        import mediapipe as mp

        self.visibility_threshold = float(visibility_threshold)
        self.torso_visibility_threshold = float(torso_visibility_threshold)
        self.segmentation = bool(segmentation)
        self._mp = mp
        self._pose = None
        self._landmarker = None
        self._task_model_path = task_model_path
        if task_model_path is not None:
            if not os.path.isfile(task_model_path):
                raise FileNotFoundError(f"pose landmarker model not found: {task_model_path}")
            from mediapipe.tasks.python import BaseOptions, vision

            options = vision.PoseLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=task_model_path),
                running_mode=vision.RunningMode.IMAGE,
                num_poses=TASKS_MAX_POSES,
                output_segmentation_masks=self.segmentation,
            )
            self._landmarker = vision.PoseLandmarker.create_from_options(options)
        else:
            self._pose = mp.solutions.pose.Pose(
                static_image_mode=True, model_complexity=1, enable_segmentation=self.segmentation
            )

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        for name in ("_pose", "_landmarker"):
            backend = getattr(self, name, None)
            if backend is not None:
                backend.close()
                setattr(self, name, None)

    def __enter__(self) -> PoseEstimator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def backend_id(self) -> str:
        """Which model made the poses, for the manifest."""
        if self._task_model_path is not None:
            return f"mediapipe-tasks/{os.path.basename(self._task_model_path)}"
        return f"mediapipe-{self._mp.__version__}/pose_landmark_full"

    # -- public ---------------------------------------------------------------------------------
    def estimate(
        self, image_rgb: np.ndarray, valid_box: tuple[float, float, float, float] | None = None
    ) -> PoseResult:
        """Pose of the chosen person in `image_rgb` (HxWx3 uint8 RGB); keypoints in its pixels.

        `valid_box` is where the photo lies on a padded canvas (joints outside it are missing).
        A person missed on the first look gets a second one, on the image padded to a square
        (SECOND_LOOK_MARGIN). An image with a side over MAX_POSE_SIDE is searched shrunk to it (results
        still in its own pixels). Raises ItemError(NO_PERSON) when neither finds a pose.
        """
        image = _check_image(image_rgb)
        if self._pose is None and self._landmarker is None:
            raise RuntimeError("PoseEstimator is closed")
        height, width = image.shape[:2]
        people = self._people(image)
        if not people:
            raise ItemError(NO_PERSON, "the pose model found no person in the image")
        boxes = [_landmark_box(lm, width, height, self.visibility_threshold) or (0, 0, 0, 0) for lm, _ in people]
        chosen = choose_person(boxes, width, height)
        landmarks, segmentation = people[chosen]
        keypoints = mediapipe_to_body25(
            landmarks, width, height, self.visibility_threshold, valid_box, self.torso_visibility_threshold
        )
        if not np.any(keypoints[:, 2] > 0):
            raise ItemError(
                NO_PERSON,
                f"the pose model found no joint with visibility >= {self.visibility_threshold} inside the image",
            )
        areas = [max(0, x1 - x0) * max(0, y1 - y0) for x0, y0, x1, y1 in boxes]
        others = [area for index, area in enumerate(areas) if index != chosen]
        return PoseResult(
            keypoints_body25=keypoints,
            landmarks_px=landmarks,
            segmentation=segmentation,
            persons_detected=len(people),
            other_person_scale=max(others) / max(areas[chosen], 1) if others else 0.0,
        )

    def person_box(self, image_rgb: np.ndarray) -> Box | None:
        """(x0, y0, x1, y1) box of the chosen person (x1/y1 exclusive), or None when there is no person."""
        image = _check_image(image_rgb)
        # Searched on the image shrunk to MAX_POSE_SIDE (as `estimate` would), and boxed there too: the mask is
        # never enlarged to a source's size only to be boxed. The box is scaled back outward to whole pixels.
        small = shrink_for_pose(image)
        try:
            result = self.estimate(small)
        except ItemError as exc:
            if exc.code == NO_PERSON:
                return None
            raise
        height, width = image.shape[:2]
        small_height, small_width = small.shape[:2]
        box = box_from_pose(result, small_width, small_height, self.visibility_threshold)
        if box is None or small is image:
            return box
        return scale_box(box, (small_width, small_height), (width, height))

    # -- backends -------------------------------------------------------------------------------
    def _people(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Every person found, in the image's pixels. The only way in to MediaPipe: an image over MAX_POSE_SIDE
        is searched shrunk, and what is found enlarged back (`enlarge_pose`)."""
        small = shrink_for_pose(image)
        people = self._find_people_tasks(small) if self._landmarker is not None else self._find_people(small)
        if small is image:
            return people
        height, width = image.shape[:2]
        from_size = (small.shape[1], small.shape[0])
        return [enlarge_pose(landmarks, segmentation, from_size, (width, height)) for landmarks, segmentation in people]

    def _solutions_pose(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
        height, width = image.shape[:2]
        result = self._pose.process(image)
        if result.pose_landmarks is None:
            return None
        landmarks = _landmark_list_to_array(result.pose_landmarks.landmark, width, height)
        mask = result.segmentation_mask
        segmentation = None if mask is None else np.array(mask, dtype=np.float32, copy=True)
        return landmarks, segmentation

    def _find_people(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Every person the solutions graph finds, painting each over before looking again."""
        height, width = image.shape[:2]
        people: list[tuple[np.ndarray, np.ndarray | None]] = []
        work = image
        found_region = np.zeros((height, width), dtype=bool)
        backdrop = _border_colour(image)
        while len(people) < MAX_PERSONS:
            found = self._solutions_pose(work)
            if found is None and not people:
                found = next(iter(self._second_look(image, lambda canvas: [self._solutions_pose(canvas)])), None)
            if found is None:
                break
            landmarks, segmentation = found
            if people and not _is_another_person(landmarks, found_region, self.visibility_threshold):
                break
            people.append(found)
            if len(people) == 1 and not _backdrop_may_hold_others(image, segmentation):
                break
            region = _erase_region(landmarks, segmentation, width, height, self.visibility_threshold)
            found_region |= region
            if len(people) < MAX_PERSONS:
                work = work.copy() if work is image else work
                work[region] = backdrop
        return people

    def _second_look(self, image: np.ndarray, find) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """The people `find` sees on the image padded to a square (SECOND_LOOK_MARGIN), in the image's pixels."""
        height, width = image.shape[:2]
        canvas, offset = pad_to_square(image, SECOND_LOOK_MARGIN, _border_colour(image))
        return [unpad_pose(pose[0], pose[1], offset, canvas.shape[1], width, height)
                for pose in find(canvas) if pose is not None]

    def _find_people_tasks(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        return self._tasks_poses(image) or self._second_look(image, self._tasks_poses)

    def _tasks_poses(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        height, width = image.shape[:2]
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=image)
        result = self._landmarker.detect(mp_image)
        masks = result.segmentation_masks or []
        people = []
        for i, pose in enumerate(result.pose_landmarks):
            segmentation = None
            if i < len(masks):
                segmentation = np.array(masks[i].numpy_view(), dtype=np.float32, copy=True).squeeze()
                if segmentation.shape != (height, width):
                    segmentation = cv2.resize(segmentation, (width, height), interpolation=cv2.INTER_LINEAR)
            people.append((_landmark_list_to_array(pose, width, height), segmentation))
        return people


# ---------------------------------------------------------------------------------------------------
# Cache of the pose model's outputs, for the parse stage
# ---------------------------------------------------------------------------------------------------

_NPZ_FORMAT = 1
_U8_TO_UNIT = np.arange(256, dtype=np.float32) / 255.0  # the stored mask's steps back to 0..1, as float32


def segmentation_to_u8(segmentation: np.ndarray) -> np.ndarray:
    """The pose mask in steps of 1/255: round(clip(p, 0, 1) * 255) (halves to even), as uint8."""
    return cv2.convertScaleAbs(cv2.max(np.asarray(segmentation, dtype=np.float32), 0.0), alpha=255.0)


def segmentation_from_u8(segmentation_u8: np.ndarray) -> np.ndarray:
    return cv2.LUT(segmentation_u8, _U8_TO_UNIT)


def pose_to_npz_bytes(result: PoseResult) -> bytes:
    """`PoseResult` as compressed .npz bytes; the segmentation is stored as uint8 0..255."""
    arrays = {
        "format": np.int32(_NPZ_FORMAT),
        "keypoints_body25": np.asarray(result.keypoints_body25, dtype=np.float32),
        "landmarks_px": np.asarray(result.landmarks_px, dtype=np.float32),
        "persons_detected": np.int32(result.persons_detected),
        "other_person_scale": np.float32(result.other_person_scale),
    }
    if result.segmentation is not None:
        arrays["segmentation_u8"] = segmentation_to_u8(result.segmentation)
    # What np.savez_compressed writes, at zlib level 1: a third of the time for a tenth more bytes.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def pose_from_npz_bytes(data: bytes) -> PoseResult:
    """Inverse of `pose_to_npz_bytes` (segmentation back to float32 0..1, within 1/510)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if int(npz["format"]) != _NPZ_FORMAT:
                raise ValueError(f"unknown pose npz format {int(npz['format'])}")
            seg_u8 = npz["segmentation_u8"] if "segmentation_u8" in npz.files else None
            persons = int(npz["persons_detected"])
            if "other_person_scale" in npz.files:
                scale = float(npz["other_person_scale"])
            elif persons == 1:
                scale = 0.0
            else:  # written before the sizes were kept: the item reruns its pose from the source
                raise ValueError("a pose npz of several people without their sizes (written by an older version)")
            return PoseResult(
                keypoints_body25=check_body25(npz["keypoints_body25"]),
                landmarks_px=_check_landmarks(npz["landmarks_px"]).astype(np.float32),
                segmentation=None if seg_u8 is None else segmentation_from_u8(seg_u8),
                persons_detected=persons,
                other_person_scale=scale,
            )
    except (OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # not an npz, or a field missing
        raise ValueError(f"not a pose npz: {exc}") from exc


# ---------------------------------------------------------------------------------------------------
# The pose stage (declared in tasks/stages/registry.py)
# ---------------------------------------------------------------------------------------------------


class PoseSettings(Config):
    """The pose stage's fields of `PreprocessConfig`."""

    pose_model: str | None = Field(None, description="URL of a MediaPipe Tasks .task pose model; None = bundled")
    visibility_threshold: float = Field(
        DEFAULT_VISIBILITY_THRESHOLD, ge=0.0, le=1.0, description="Joints below it are written as 0,0,0 (shoulders and hips: see the torso one)"
    )
    torso_visibility_threshold: float = Field(
        DEFAULT_TORSO_VISIBILITY_THRESHOLD, ge=0.0, le=1.0, description="Shoulders and hips (what the agnostic needs) are kept down to this "
        "visibility, with it as their confidence, as OpenPose keeps them; below it they are missing (missing_keypoints)"
    )


def pose_weights_url(config) -> str | None:
    return config.pose_model


def mediapipe_id() -> str:
    """The installed MediaPipe, for fingerprints (read from its metadata: a no-op run never imports it)."""
    return f"mediapipe-{importlib.metadata.version('mediapipe')}"


def pose_params(config, weights: ModelFile | None) -> dict:
    model = weights.sha256 if weights else "pose_landmark_full"
    return {"model": f"{mediapipe_id()}/{model}", "visibility": config.visibility_threshold,
            "torso_visibility": config.torso_visibility_threshold}


def pose_sidecar_name(stem: str) -> str:
    """The pose model's outputs for the parse stage, under `_work/<split>/pose/`."""
    return f"{stem}.npz"


def _estimator(env) -> PoseEstimator:
    weights, config = env.weights.of("pose"), env.config
    thresholds = (config.visibility_threshold, config.torso_visibility_threshold)
    key = ("pose", weights.sha256 if weights else "bundled", *thresholds)
    return env.model(key, lambda: PoseEstimator(task_model_path=weights.path if weights else None,
                                                visibility_threshold=thresholds[0],
                                                torso_visibility_threshold=thresholds[1]))


def person_locator(env) -> PoseEstimator:
    """The person finder of `fit=crop` (ingest): the bundled model at its default thresholds (the estimator
    itself when the configuration keeps them: one model, not two)."""
    key = ("pose", "bundled", DEFAULT_VISIBILITY_THRESHOLD, DEFAULT_TORSO_VISIBILITY_THRESHOLD)
    return env.model(key, PoseEstimator)


def prepare_pose(env) -> None:
    if env.config.pose_model is None:
        _estimator(env)


def as_stored(result: PoseResult) -> PoseResult:
    """The result as its sidecar stores it (segmentation in steps of 1/255): what later stages see."""
    if result.segmentation is None:
        return result
    return PoseResult(result.keypoints_body25, result.landmarks_px,
                      segmentation_from_u8(segmentation_to_u8(result.segmentation)),
                      result.persons_detected, float(np.float32(result.other_person_scale)))


def estimate_pose(env, item) -> PoseResult:
    from vitonhd_models.agnostic import check_agnostic_keypoints

    ingested = item.values["ingest"]
    valid_box = ingested.fit.content_box() if ingested.fit is not None else None
    result = _estimator(env).estimate(ingested.image, valid_box=valid_box)
    try:  # fail early: without these joints the agnostic masks would be silently wrong
        check_agnostic_keypoints(result.keypoints_body25)
    except ItemError as error:
        raise ItemError(error.code, error.message, pose_fields(env, result)) from None
    return as_stored(result)


def encode_pose(result: PoseResult) -> tuple[bytes, ...]:
    keypoints = result.keypoints_body25
    return (json.dumps(openpose_json(keypoints)).encode("utf-8"), encode_png(render_body25(keypoints)),
            pose_to_npz_bytes(result))


def pose_fields(env, result: PoseResult) -> dict:
    return {
        "model": _estimator(env).backend_id,
        "persons_detected": int(result.persons_detected),
        "keypoint_confidences": [float(c) for c in result.keypoints_body25[:, 2]],
    }


def load_pose(work, files: tuple[bytes, ...]) -> PoseResult:
    return pose_from_npz_bytes(files[0])


# ---------------------------------------------------------------------------------------------------
# The pose gate (declared in tasks/stages/registry.py): photos that are no VITON-HD material
# ---------------------------------------------------------------------------------------------------


class PoseGateSettings(Config):
    """The pose gate's fields of `PreprocessConfig`."""

    max_torso_tilt_deg: float = Field(
        45.0, ge=0.0, le=180.0, description="Persons whose torso leans further from upright are refused (not_upright)"
    )
    max_other_person_scale: float = Field(
        0.5, ge=0.0, description="Photos where another person is at least this size (box area) of the chosen one "
        "are refused (several_persons)"
    )


def gate_params(config, weights: ModelFile | None) -> dict:
    return {"max_torso_tilt_deg": config.max_torso_tilt_deg, "max_other_person_scale": config.max_other_person_scale}


def torso_tilt_deg(keypoints_body25: np.ndarray) -> float | None:
    """The angle between the torso (neck -> mid-hip) and straight down, in degrees: 0 standing, 90 lying
    down, 180 upside down. None without a neck or a mid-hip."""
    neck, hip = keypoints_body25[Body25.NECK], keypoints_body25[Body25.MID_HIP]
    if neck[2] <= 0 or hip[2] <= 0:
        return None
    dx, dy = float(hip[0] - neck[0]), float(hip[1] - neck[1])  # image y grows downwards
    return math.degrees(math.atan2(abs(dx), dy))


def gate_pose(env, item) -> dict:
    """Refuse a person lying down or upside down, and a photo of several people of similar size."""
    from vitonhd_models.errors import NOT_UPRIGHT, SEVERAL_PERSONS

    pose, config = item.values["pose"], env.config
    seen = {"persons_detected": int(pose.persons_detected), "other_person_scale": round(pose.other_person_scale, 3),
            "torso_tilt_deg": torso_tilt_deg(pose.keypoints_body25)}
    tilt = seen["torso_tilt_deg"]
    if tilt is not None and tilt > config.max_torso_tilt_deg:
        raise ItemError(NOT_UPRIGHT, f"the torso is {tilt:.0f} degrees from upright (more than max_torso_tilt_deg "
                                     f"{config.max_torso_tilt_deg:g}): the person lies down or is upside down", seen)
    if pose.persons_detected > 1 and pose.other_person_scale >= config.max_other_person_scale:
        raise ItemError(SEVERAL_PERSONS, f"{pose.persons_detected} people, another one {pose.other_person_scale:.2f} "
                                         f"times the size of the chosen one (max_other_person_scale "
                                         f"{config.max_other_person_scale:g}): not one person to dress", seen)
    return seen


def gate_fields(env, seen: dict) -> dict:
    return dict(seen)
