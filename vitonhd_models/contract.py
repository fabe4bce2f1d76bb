"""The VITON-HD / HR-VITON on-disk contract: one place for every size, folder, label and index.

Every constant cites `../shared/research/vitonhd-contract.md` (the "contract") by section.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

# Contract §1.2: everything assumes exactly 768 (W) x 1024 (H).
IMAGE_WIDTH = 768
IMAGE_HEIGHT = 1024
IMAGE_SIZE_WH = (IMAGE_WIDTH, IMAGE_HEIGHT)

# Contract §2.1 (HR-VITON layout, the released dataset zip): folder names under <root>/<split>/.
DIR_IMAGE = "image"
DIR_CLOTH = "cloth"
DIR_CLOTH_MASK = "cloth-mask"
DIR_PARSE = "image-parse-v3"
DIR_PARSE_AGNOSTIC = "image-parse-agnostic-v3.2"
DIR_AGNOSTIC = "agnostic-v3.2"
DIR_POSE_IMG = "openpose_img"
DIR_POSE_JSON = "openpose_json"

# Contract §1.1: the folder names VITON-HD's own datasets.py reads (its "view" of the same data).
DIR_PARSE_VITONHD = "image-parse"
DIR_POSE_IMG_VITONHD = "openpose-img"
DIR_POSE_JSON_VITONHD = "openpose-json"
# Contract §2.1: HR-VITON reads DensePose renderings (detectron2) from here; we do not write them.
DIR_DENSEPOSE = "image-densepose"

# Ours, not the contract's: intermediate files (pose model outputs, child runs' work lists).
WORK_DIR = "_work"

# Contract §1.1: persons, cloths, cloth masks and agnostic images are `.jpg` files (lowercase: the loaders
# derive companion names with the case-sensitive replace('.jpg', ...)); parse maps are `.png`.
JPG = ".jpg"
JPEG_QUALITY = 95  # our choice; the contract fixes the format (JPEG), not the quality
MASK_THRESHOLD = 128  # contract §1.1: the loaders read a cloth mask as `np.array(mask) >= 128`


def person_image_name(stem: str) -> str:
    return f"{stem}{JPG}"


def cloth_image_name(stem: str) -> str:
    return f"{stem}{JPG}"


def cloth_mask_name(stem: str) -> str:
    # Contract §1.1: the mask has the same file name as the cloth, `.jpg` included.
    return f"{stem}{JPG}"


def parse_name(stem: str) -> str:
    return f"{stem}.png"


def parse_agnostic_name(stem: str) -> str:
    return f"{stem}.png"


def agnostic_name(stem: str) -> str:
    return f"{stem}{JPG}"


def keypoints_json_name(stem: str) -> str:
    # Contract §1.1: img_name.replace('.jpg', '_keypoints.json')
    return f"{stem}_keypoints.json"


def rendered_pose_name(stem: str) -> str:
    # Contract §1.1: img_name.replace('.jpg', '_rendered.png')
    return f"{stem}_rendered.png"


# Contract §1.1 / §2.1: <root>/<split>_pairs.txt, next to the split folder.
PAIRS_FILE_SUFFIX = "_pairs.txt"


def pairs_file_name(split: str) -> str:
    return f"{split}{PAIRS_FILE_SUFFIX}"


def pairs_file_split(name: str) -> str | None:
    """The split a `<split>_pairs.txt` file name is for; None for any other name."""
    split = name.removesuffix(PAIRS_FILE_SUFFIX)
    return split if split and split != name else None


class Body25(IntEnum):
    """OpenPose BODY_25 keypoint indices (contract §1.5, openpose doc/02_output.md)."""

    NOSE = 0
    NECK = 1
    R_SHOULDER = 2
    R_ELBOW = 3
    R_WRIST = 4
    L_SHOULDER = 5
    L_ELBOW = 6
    L_WRIST = 7
    MID_HIP = 8
    R_HIP = 9
    R_KNEE = 10
    R_ANKLE = 11
    L_HIP = 12
    L_KNEE = 13
    L_ANKLE = 14
    R_EYE = 15
    L_EYE = 16
    R_EAR = 17
    L_EAR = 18
    L_BIG_TOE = 19
    L_SMALL_TOE = 20
    L_HEEL = 21
    R_BIG_TOE = 22
    R_SMALL_TOE = 23
    R_HEEL = 24


BODY25_COUNT = 25

# Contract §5: the agnostic algorithms anchor on these; without them the masks sit at the origin.
AGNOSTIC_REQUIRED_KEYPOINTS = (
    Body25.NECK,
    Body25.R_SHOULDER,
    Body25.L_SHOULDER,
    Body25.R_HIP,
    Body25.L_HIP,
)

OPENPOSE_JSON_VERSION = 1.3  # contract §1.5


def keypoint_missing(point) -> bool:
    """Contract §1.5 / §1.6: a joint (x, y, ...) is missing when it is exactly (0, 0), as the loaders test it."""
    return bool(point[0] == 0 and point[1] == 0)


class Cihp(IntEnum):
    """CIHP 20-label ids (contract §1.3). 10 is torso-skin, treated as neck by the agnostic code."""

    BACKGROUND = 0
    HAT = 1
    HAIR = 2
    GLOVE = 3
    SUNGLASSES = 4
    UPPER_CLOTHES = 5
    DRESS = 6
    COAT = 7
    SOCKS = 8
    PANTS = 9
    TORSO_SKIN = 10
    SCARF = 11
    SKIRT = 12
    FACE = 13
    LEFT_ARM = 14
    RIGHT_ARM = 15
    LEFT_LEG = 16
    RIGHT_LEG = 17
    LEFT_SHOE = 18
    RIGHT_SHOE = 19


CIHP_NUM_LABELS = 20
CIHP_LABEL_NAMES = tuple(label.name.lower() for label in Cihp)

# Contract §1.3: CIHP_PGN utils/utils.py label_colours, ids 0..19.
CIHP_PALETTE = (
    (0, 0, 0),
    (128, 0, 0),
    (255, 0, 0),
    (0, 85, 0),
    (170, 0, 51),
    (255, 85, 0),
    (0, 0, 85),
    (0, 119, 221),
    (85, 85, 0),
    (0, 85, 85),
    (85, 51, 0),
    (52, 86, 128),
    (0, 128, 0),
    (0, 0, 255),
    (51, 170, 221),
    (0, 255, 255),
    (85, 255, 170),
    (170, 255, 85),
    (255, 255, 0),
    (255, 170, 0),
)


def cihp_palette_flat() -> list[int]:
    """The CIHP palette as PIL's 768-entry flat list (unused entries black)."""
    flat = [channel for colour in CIHP_PALETTE for channel in colour]
    return flat + [0] * (768 - len(flat))


# Contract §1.4: raw CIHP ids -> the 13 groups fed to the SegGenerator.
CIHP_TO_GROUP13 = {
    0: (0, 10),  # background (torso-skin merged in)
    1: (1, 2),  # hair
    2: (4, 13),  # face
    3: (5, 6, 7),  # upper
    4: (9, 12),  # bottom
    5: (14,),  # left_arm
    6: (15,),  # right_arm
    7: (16,),  # left_leg
    8: (17,),  # right_leg
    9: (18,),  # left_shoe
    10: (19,),  # right_shoe
    11: (8,),  # socks
    12: (3, 11),  # noise
}

# Contract §1.4: 13-group ids -> the 7 generator groups.
GROUP13_TO_GROUP7 = {
    0: (0,),  # background
    1: (2, 4, 7, 8, 9, 10, 11),  # paste
    2: (3,),  # upper
    3: (1,),  # hair
    4: (5,),  # left_arm
    5: (6,),  # right_arm
    6: (12,),  # noise
}

# Contract §1.6 and §1.7: label sets used by the agnostic algorithms.
UPPER_CLOTHES_LABELS = (Cihp.UPPER_CLOTHES, Cihp.DRESS, Cihp.COAT)
NECK_LABELS = (Cihp.TORSO_SKIN,)
# Contract §1.6: what the parse-agnostic algorithm sets to background (upper clothes and neck).
PARSE_AGNOSTIC_REMOVED_LABELS = UPPER_CLOTHES_LABELS + NECK_LABELS
HEAD_LABELS = (Cihp.SUNGLASSES, Cihp.FACE)
LOWER_BODY_LABELS = (
    Cihp.PANTS,
    Cihp.SKIRT,
    Cihp.LEFT_LEG,
    Cihp.RIGHT_LEG,
    Cihp.LEFT_SHOE,
    Cihp.RIGHT_SHOE,
)


def colourise_parse(labels: np.ndarray) -> np.ndarray:
    """A CIHP label map (H, W) as RGB (H, W, 3) uint8 with the CIHP palette."""
    palette = np.asarray(CIHP_PALETTE, dtype=np.uint8)
    return palette[np.clip(labels, 0, len(CIHP_PALETTE) - 1)]


class DensePosePart(IntEnum):
    """DensePose's 24 body parts (the index I of its IUV output; 0 is no body). Left and right are the
    person's own. HR-VITON's `image-densepose/` renders I (see `DENSEPOSE_COLOUR_SCALE`)."""

    BACKGROUND = 0
    TORSO_BACK = 1
    TORSO_FRONT = 2
    RIGHT_HAND = 3
    LEFT_HAND = 4
    LEFT_FOOT = 5
    RIGHT_FOOT = 6
    RIGHT_UPPER_LEG_BACK = 7
    LEFT_UPPER_LEG_BACK = 8
    RIGHT_UPPER_LEG_FRONT = 9
    LEFT_UPPER_LEG_FRONT = 10
    RIGHT_LOWER_LEG_BACK = 11
    LEFT_LOWER_LEG_BACK = 12
    RIGHT_LOWER_LEG_FRONT = 13
    LEFT_LOWER_LEG_FRONT = 14
    LEFT_UPPER_ARM_INSIDE = 15
    RIGHT_UPPER_ARM_INSIDE = 16
    LEFT_UPPER_ARM_OUTSIDE = 17
    RIGHT_UPPER_ARM_OUTSIDE = 18
    LEFT_LOWER_ARM_INSIDE = 19
    RIGHT_LOWER_ARM_INSIDE = 20
    LEFT_LOWER_ARM_OUTSIDE = 21
    RIGHT_LOWER_ARM_OUTSIDE = 22
    RIGHT_HEAD = 23
    LEFT_HEAD = 24


DENSEPOSE_NUM_PARTS = 24
# The dataset's image-densepose/ files: OpenCV's COLORMAP_PARULA of I * 255 / 24 (a uint8), black where I = 0,
# at full opacity (detectron2 apply_net.py `show ... dp_segm` with alpha 1 on a black canvas); measured on
# groundtruth/vitonhd/image-densepose/00006_00.jpg.
DENSEPOSE_COLOUR_SCALE = 255.0 / DENSEPOSE_NUM_PARTS
# Coarse groups of the parts, for measuring agreement (front and back, inside and outside, left and right merged).
DENSEPOSE_GROUPS = {
    "head": (23, 24),
    "torso": (1, 2),
    "upper_arms": (15, 16, 17, 18),
    "lower_arms": (19, 20, 21, 22),
    "hands": (3, 4),
    "upper_legs": (7, 8, 9, 10),
    "lower_legs": (11, 12, 13, 14),
    "feet": (5, 6),
}
