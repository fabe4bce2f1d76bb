"""OpenPose BODY_25 keypoints as VITON-HD's loaders read them (contract §1.5): the JSON reader and the
shape rules. The bottom layer: numpy only."""

from __future__ import annotations

import numpy as np

from vitonhd_models.contract import BODY25_COUNT


def check_body25(keypoints_body25: np.ndarray) -> np.ndarray:
    kp = np.asarray(keypoints_body25, dtype=np.float32)
    if kp.shape == (BODY25_COUNT * 3,):
        kp = kp.reshape(BODY25_COUNT, 3)
    if kp.shape != (BODY25_COUNT, 3):
        raise ValueError(f"BODY_25 keypoints must be ({BODY25_COUNT}, 3); got {kp.shape}")
    if not np.all(np.isfinite(kp)):
        raise ValueError("BODY_25 keypoints hold NaN or infinity (OpenPose writes 0, 0, 0 for missing joints)")
    return kp


def keypoints_from_openpose_json(document: dict) -> np.ndarray:
    """The first person's `pose_keypoints_2d` as (25, 3) float32, as VITON-HD reads it (people[0]).

    Raises ValueError when the document holds no person or its pose is not BODY_25 (75 numbers).
    """
    if not isinstance(document, dict):
        raise ValueError(f"an OpenPose document is a JSON object; got {type(document).__name__}")
    people = document.get("people")
    if not isinstance(people, list) or not people:
        raise ValueError("the OpenPose document holds no person (`people` is missing or empty)")
    first = people[0]
    flat = first.get("pose_keypoints_2d") if isinstance(first, dict) else None
    if not isinstance(flat, list):
        raise ValueError("people[0] has no `pose_keypoints_2d` list")
    if len(flat) != BODY25_COUNT * 3:
        raise ValueError(
            f"pose_keypoints_2d has {len(flat)} numbers; BODY_25 has {BODY25_COUNT * 3} "
            f"(COCO-18 has 54, and would put the hips at the knees: contract §0 item 6)"
        )
    try:
        return check_body25(np.asarray(flat, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"pose_keypoints_2d is not 75 finite numbers: {exc}") from exc
