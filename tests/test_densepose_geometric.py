"""The geometric DensePose parts (tasks/stages/densepose_geometric.py) on a real photo, against the
dataset's own DensePose render of it (../shared/groundtruth/vitonhd/image-densepose/00006_00.jpg), measured
as bench/accuracy.py measures it.

geometric-v1 measured 0.757 mean IoU over the coarse groups present here (its part map before JPEG; the bench
reads our written render and gives 0.776); the floor sits a little below, so that a change that makes the
parts worse fails while noise in MediaPipe does not.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tasks.stages.densepose_geometric import densepose_parts
from tasks.stages.normalize import decode_image, fit_to_canvas
from tasks.stages.parse_geometric import GeometricParser
from tasks.stages.pose import PoseEstimator, as_stored
from tests.conftest import PROJECT_ROOT
from vitonhd_models.contract import DENSEPOSE_NUM_PARTS, Cihp
from vitonhd_models.contract import DensePosePart as Part

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from accuracy import DENSEPOSE_GROUP_NAMES, body_groups, densepose_overlaps, read_densepose  # noqa: E402

GROUNDTRUTH = PROJECT_ROOT.parent / "shared" / "groundtruth" / "vitonhd"
STEM = "00006_00"
MIN_MEAN_GROUP_IOU = 0.72
RIGHT_PARTS = (Part.RIGHT_HEAD, Part.RIGHT_HAND, Part.RIGHT_UPPER_ARM_INSIDE, Part.RIGHT_UPPER_ARM_OUTSIDE,
               Part.RIGHT_LOWER_ARM_INSIDE, Part.RIGHT_LOWER_ARM_OUTSIDE, Part.RIGHT_UPPER_LEG_FRONT)
LEFT_PARTS = (Part.LEFT_HEAD, Part.LEFT_HAND, Part.LEFT_UPPER_ARM_INSIDE, Part.LEFT_UPPER_ARM_OUTSIDE,
              Part.LEFT_LOWER_ARM_INSIDE, Part.LEFT_LOWER_ARM_OUTSIDE, Part.LEFT_UPPER_LEG_FRONT)
MIRRORED_LANDMARKS = [0, 4, 5, 6, 1, 2, 3, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 18, 17, 20, 19, 22, 21, 24, 23,
                      26, 25, 28, 27, 30, 29, 32, 31]  # MediaPipe's left and right landmarks swapped


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
    theirs = read_densepose(GROUNDTRUTH / "image-densepose" / f"{STEM}.jpg")
    _, groups, _ = densepose_overlaps(densepose_parts(*person), theirs)
    mean = body_groups(groups)
    shown = ", ".join(f"{name} {iou:.2f}" for name, iou in zip(DENSEPOSE_GROUP_NAMES, groups.iou()) if not np.isnan(iou))
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
