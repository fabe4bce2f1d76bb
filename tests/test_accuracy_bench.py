"""bench/accuracy.py's measures, on hand-checked fixtures: what the parse, pose, DensePose and mask figures mean."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT
from vitonhd_models.contract import Body25, Cihp, DensePosePart

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from accuracy import (  # noqa: E402
    DENSEPOSE_GROUP_NAMES,
    DENSEPOSE_UNSURE,
    HEADLINE_GROUPS,
    Overlap,
    PoseComparison,
    body_groups,
    densepose_group_map,
    densepose_overlaps,
    disagreement,
    group_map,
    mask_iou,
    read_densepose,
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


def test_a_densepose_render_decodes_to_the_nearest_of_the_25_colours(tmp_path):
    from PIL import Image

    # By hand, COLORMAP_PARULA in RGB: I = 2 (torso front) is (20, 80, 194), I = 24 (left head) (249, 251, 14).
    pixels = np.array([[[0, 0, 0], [20, 80, 194], [249, 251, 14]],
                       [[3, 2, 4], [22, 78, 196], [246, 252, 17]],  # JPEG-like noise: within 6 of a colour
                       [[134, 165, 104], [10, 40, 97], [0, 0, 0]]], np.uint8)  # blends of 2 and 24, of 2 and black
    path = tmp_path / "render.png"
    Image.fromarray(pixels).save(path)
    unsure = DENSEPOSE_UNSURE
    assert read_densepose(path).tolist() == [[0, 2, 24], [0, 2, 24], [unsure, unsure, 0]], \
        "black is no body, noise goes to the nearest colour, a blend near none is left unsure"


def test_densepose_groups_merge_front_and_back_and_left_and_right():
    parts = np.array([[DensePosePart.TORSO_BACK, DensePosePart.TORSO_FRONT, DensePosePart.LEFT_UPPER_ARM_OUTSIDE,
                       DensePosePart.RIGHT_HAND, DensePosePart.RIGHT_HEAD, DensePosePart.BACKGROUND]], np.uint8)
    names = [DENSEPOSE_GROUP_NAMES[group] for group in densepose_group_map(parts)[0]]
    assert names == ["torso", "torso", "upper_arms", "hands", "head", "background"]


def test_densepose_iou_per_part_and_group_and_the_mean_over_the_groups_either_side_has():
    ours = np.array([[DensePosePart.TORSO_FRONT, DensePosePart.TORSO_BACK, DensePosePart.LEFT_UPPER_ARM_INSIDE, 0]],
                    np.uint8)
    theirs = np.array([[DensePosePart.TORSO_BACK, DensePosePart.TORSO_BACK, DensePosePart.LEFT_UPPER_ARM_OUTSIDE,
                        DensePosePart.LEFT_HEAD]], np.uint8)
    parts, groups, body = densepose_overlaps(ours, theirs)
    # parts: torso back ours {1}, theirs {0, 1}: 1/2; torso front and the two upper arm sides on one side only: 0
    assert parts.iou()[DensePosePart.TORSO_BACK] == 0.5
    assert parts.iou()[DensePosePart.TORSO_FRONT] == parts.iou()[DensePosePart.LEFT_UPPER_ARM_INSIDE] == 0.0
    iou = dict(zip(DENSEPOSE_GROUP_NAMES, groups.iou()))
    # groups: torso {0, 1} both: 1; upper arms {2} both: 1; head only theirs: 0; the legs nobody has: left out
    assert (iou["torso"], iou["upper_arms"], iou["head"]) == (1.0, 1.0, 0.0) and math.isnan(iou["feet"])
    assert body_groups(groups) == 2 / 3, "the mean over torso, upper arms and head; background left out"
    assert body.iou()[1] == 3 / 4, "body: ours 3 pixels, theirs 4"


def test_pixels_either_side_decoded_unsure_are_left_out():
    ours = np.array([[DensePosePart.TORSO_FRONT, DENSEPOSE_UNSURE, 0]], np.uint8)
    theirs = np.array([[DensePosePart.TORSO_FRONT, DensePosePart.LEFT_FOOT, DENSEPOSE_UNSURE]], np.uint8)
    parts, groups, body = densepose_overlaps(ours, theirs)
    assert parts.pixels == 1 and math.isnan(dict(zip(DENSEPOSE_GROUP_NAMES, groups.iou()))["feet"])
    assert body_groups(groups) == 1.0
