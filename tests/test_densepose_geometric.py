"""The geometric DensePose parts (tasks/stages/densepose_geometric.py) on a real photo, against the
dataset's own DensePose render of it (../shared/groundtruth/vitonhd/image-densepose/00006_00.jpg).

geometric-v1 measured 0.72 mean IoU over the coarse groups present (head 0.81, torso 0.89, upper arms
0.73, lower arms 0.54, hands 0.60, upper legs 0.74); the floor sits a little below, so that a change
that makes the parts worse fails while noise in MediaPipe does not.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tasks.stages.densepose import decode_densepose
from tasks.stages.densepose_geometric import densepose_parts
from tasks.stages.normalize import decode_image, fit_to_canvas
from tasks.stages.parse_geometric import GeometricParser
from tasks.stages.pose import PoseEstimator, as_stored
from tests.conftest import PROJECT_ROOT
from vitonhd_models.contract import DENSEPOSE_GROUPS, DENSEPOSE_NUM_PARTS, Cihp
from vitonhd_models.contract import DensePosePart as Part

GROUNDTRUTH = PROJECT_ROOT.parent / "shared" / "groundtruth" / "vitonhd"
STEM = "00006_00"
MIN_MEAN_GROUP_IOU = 0.68
MIN_GROUP_SHARE = 0.01  # a group counts when it holds this share of the body in either map
RIGHT_PARTS = (Part.RIGHT_HEAD, Part.RIGHT_HAND, Part.RIGHT_UPPER_ARM_INSIDE, Part.RIGHT_UPPER_ARM_OUTSIDE,
               Part.RIGHT_LOWER_ARM_INSIDE, Part.RIGHT_LOWER_ARM_OUTSIDE, Part.RIGHT_UPPER_LEG_FRONT)
LEFT_PARTS = (Part.LEFT_HEAD, Part.LEFT_HAND, Part.LEFT_UPPER_ARM_INSIDE, Part.LEFT_UPPER_ARM_OUTSIDE,
              Part.LEFT_LOWER_ARM_INSIDE, Part.LEFT_LOWER_ARM_OUTSIDE, Part.LEFT_UPPER_LEG_FRONT)
MIRRORED_LANDMARKS = [0, 4, 5, 6, 1, 2, 3, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 18, 17, 20, 19, 22, 21, 24, 23,
                      26, 25, 28, 27, 30, 29, 32, 31]  # MediaPipe's left and right landmarks swapped


def their_parts(path) -> np.ndarray:
    """The part index of a dataset render (the nearest of the 25 colours), JPEG's blends along the edges
    settled by a 5x5 median."""
    return cv2.medianBlur(decode_densepose(np.asarray(decode_image(path.read_bytes()))), 5)


@pytest.fixture(scope="module")
def person() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(photo, MediaPipe landmarks, our parse) of the development person with a DensePose render."""
    path = GROUNDTRUTH / "image" / f"{STEM}.jpg"
    if not path.is_file():
        pytest.skip(f"the development set is not at {GROUNDTRUTH} (it lives in ../shared, outside the repo)")
    canvas, _ = fit_to_canvas(np.asarray(decode_image(path.read_bytes())))
    with PoseEstimator() as estimator, GeometricParser() as parser:
        pose = as_stored(estimator.estimate(canvas))
        return canvas, pose.landmarks_px, parser.parse(canvas, pose)


def test_the_parts_agree_with_the_datasets_densepose_over_the_coarse_groups(person):
    ours = densepose_parts(*person)
    theirs = their_parts(GROUNDTRUTH / "image-densepose" / f"{STEM}.jpg")
    body = max(int((theirs > 0).sum()), 1)
    ious = {}
    for group, parts in DENSEPOSE_GROUPS.items():
        mine, truth = np.isin(ours, parts), np.isin(theirs, parts)
        if max(mine.sum(), truth.sum()) >= MIN_GROUP_SHARE * body:
            ious[group] = (mine & truth).sum() / (mine | truth).sum()
    mean = float(np.mean(list(ious.values())))
    shown = ", ".join(f"{group} {iou:.2f}" for group, iou in ious.items())
    assert mean >= MIN_MEAN_GROUP_IOU, f"mean coarse-group IoU fell to {mean:.3f} (floor {MIN_MEAN_GROUP_IOU}): {shown}"


def test_there_is_no_body_where_the_parse_has_none(person):
    image, landmarks, parse = person
    ours = densepose_parts(image, landmarks, parse)
    assert not ours[parse == Cihp.BACKGROUND].any()
    assert set(np.unique(ours)) <= set(range(DENSEPOSE_NUM_PARTS + 1))


def test_the_persons_right_is_the_images_left_when_they_face_the_camera(person):
    ours = densepose_parts(*person)
    right_x = np.nonzero(np.isin(ours, RIGHT_PARTS))[1].mean()
    left_x = np.nonzero(np.isin(ours, LEFT_PARTS))[1].mean()
    assert right_x < left_x, f"right parts at x {right_x:.0f}, left parts at x {left_x:.0f}"


def test_a_person_seen_from_behind_gets_the_back_of_the_torso_and_legs(person):
    image, landmarks, parse = person
    behind = densepose_parts(image, landmarks[MIRRORED_LANDMARKS], parse)
    assert (behind == Part.TORSO_BACK).sum() > 0 and not (behind == Part.TORSO_FRONT).any()
    assert not np.isin(behind, (Part.LEFT_UPPER_LEG_FRONT, Part.RIGHT_UPPER_LEG_FRONT)).any()


def test_hair_away_from_the_skull_is_not_body(person):
    image, landmarks, parse = person
    loose = parse.copy()
    loose[40:120, 20:120] = Cihp.HAIR  # a lock far beside the head, above the neck
    assert not densepose_parts(image, landmarks, loose)[40:120, 20:120].any()
