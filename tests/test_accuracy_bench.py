"""bench/accuracy.py's measures, on hand-checked fixtures: what the parse, pose and mask figures mean."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT
from vitonhd_models.contract import Body25, Cihp

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from accuracy import (  # noqa: E402
    HEADLINE_GROUPS,
    Overlap,
    PoseComparison,
    disagreement,
    group_map,
    mask_iou,
    torso_length,
)


def test_groups_follow_the_contracts_13_group_table():
    labels = np.array([[Cihp.TORSO_SKIN, Cihp.HAT, Cihp.SUNGLASSES, Cihp.COAT, Cihp.SKIRT, Cihp.GLOVE]], np.uint8)
    assert group_map(labels).tolist() == [[0, 1, 2, 3, 4, 12]], "neck is background, hat hair, coat upper, ..."


def test_iou_and_accuracy_per_class_are_counted_by_hand():
    ours = np.array([[0, 0, 1, 1], [0, 2, 2, 2]], np.uint8)
    theirs = np.array([[0, 1, 1, 1], [0, 2, 2, 0]], np.uint8)
    overlap = Overlap(3).add(ours, theirs)
    # class 0: ours {0,1,4}, theirs {0,4,7}: 2 / 4; class 1: ours {2,3}, theirs {1,2,3}: 2 / 3; class 2: 2 / 3
    np.testing.assert_allclose(overlap.iou(), [0.5, 2 / 3, 2 / 3])
    np.testing.assert_allclose(overlap.accuracy(), [2 / 3, 2 / 3, 1.0])
    assert overlap.pixel_accuracy() == 6 / 8


def test_a_class_neither_side_has_is_left_out_of_the_mean():
    overlap = Overlap(13).add(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    assert math.isnan(overlap.iou()[5])
    assert overlap.mean_iou(HEADLINE_GROUPS) == 1.0, "only background is present, and it agrees"


def test_overall_figures_pool_the_pixels_of_every_item():
    pooled = Overlap(2).add(np.ones((1, 4), np.uint8), np.ones((1, 4), np.uint8))
    pooled.add(np.zeros((1, 4), np.uint8), np.ones((1, 4), np.uint8))
    assert pooled.iou()[1] == 4 / 8, "intersection and union summed over items, not a mean of their IoUs"


def _pose(**joints: tuple[float, float]) -> np.ndarray:
    keypoints = np.zeros((25, 3), np.float32)
    for name, (x, y) in joints.items():
        keypoints[Body25[name]] = (x, y, 0.9)
    return keypoints


def test_the_torso_length_is_neck_to_mid_hip_or_to_the_hips_midpoint():
    assert torso_length(_pose(NECK=(100, 100), MID_HIP=(100, 300))) == 200
    assert torso_length(_pose(NECK=(100, 100), L_HIP=(150, 400), R_HIP=(50, 400))) == 300
    assert torso_length(_pose(NECK=(100, 100))) is None


def test_pose_distances_are_in_torso_lengths_and_one_sided_joints_are_counted_apart():
    theirs = _pose(NECK=(100, 100), MID_HIP=(100, 300), NOSE=(100, 50), L_KNEE=(120, 500))
    ours = _pose(NECK=(100, 110), MID_HIP=(100, 300), NOSE=(100, 90), R_KNEE=(80, 500))
    comparison = PoseComparison()
    found = comparison.add(ours, theirs)
    assert found == {Body25.NOSE: 0.2, Body25.NECK: 0.05, Body25.MID_HIP: 0.0}
    assert comparison.only_theirs[Body25.L_KNEE] == 1 and comparison.only_ours[Body25.R_KNEE] == 1
    assert comparison.pck(0.1) == pytest.approx(2 / 3) and comparison.pck(0.2) == 1.0


def test_mask_iou_and_the_disagreement_colours():
    ours = np.array([[True, True, False]])
    theirs = np.array([[True, False, True]])
    assert mask_iou(ours, theirs) == 1 / 3
    shown = disagreement(np.zeros((1, 3, 3), np.uint8), ours, theirs)
    assert shown[0, 1].tolist() == [0, 200, 0] and shown[0, 2].tolist() == [255, 0, 0], "green: only ours, red: only theirs"
