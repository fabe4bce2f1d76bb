"""Pose stage: MediaPipe -> BODY_25 mapping, OpenPose JSON, rendered skeleton, the estimator on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tasks.stages.pose import (
    DEFAULT_TORSO_VISIBILITY_THRESHOLD,
    HIP_BELOW_FRAME_MARGIN,
    MAX_POSE_SIDE,
    SECOND_LOOK_MARGIN,
    PoseEstimator,
    PoseResult,
    box_from_pose,
    choose_person,
    mediapipe_to_body25,
    openpose_json,
    pad_to_square,
    pose_from_npz_bytes,
    pose_input_size,
    pose_to_npz_bytes,
    render_body25,
    scale_box,
    shrink_for_pose,
    unpad_pose,
)
from vitonhd_models.agnostic import GRAY, check_agnostic_keypoints, image_agnostic, parse_agnostic
from vitonhd_models.contract import (
    AGNOSTIC_REQUIRED_KEYPOINTS,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    OPENPOSE_JSON_VERSION,
    Body25,
)
from vitonhd_models.errors import MISSING_KEYPOINTS, NO_PERSON, ItemError
from vitonhd_models.openpose import keypoints_from_openpose_json

W, H = IMAGE_WIDTH, IMAGE_HEIGHT


# ---------------------------------------------------------------------------------------------------
# Synthetic landmarks
# ---------------------------------------------------------------------------------------------------


def _landmarks(visibility: float = 0.9) -> np.ndarray:
    """33 landmarks, each at its own pixel (x = 100 + 10 i, y = 200 + 20 i), all equally visible."""
    lm = np.zeros((33, 4), dtype=np.float32)
    for i in range(33):
        lm[i] = (100 + 10 * i, 200 + 20 * i, -0.1, visibility)
    return lm


# The specification, written out rather than imported: BODY_25 joint <- MediaPipe landmark.
EXPECTED_MAP = {
    0: 0,  # nose
    2: 12, 3: 14, 4: 16,  # right shoulder, elbow, wrist
    5: 11, 6: 13, 7: 15,  # left shoulder, elbow, wrist
    9: 24, 10: 26, 11: 28,  # right hip, knee, ankle
    12: 23, 13: 25, 14: 27,  # left hip, knee, ankle
    15: 5, 16: 2,  # right eye, left eye
    17: 8, 18: 7,  # right ear, left ear
    19: 31, 21: 29,  # left big toe, left heel
    22: 32, 24: 30,  # right big toe, right heel
}  # fmt: skip


def test_mapping_copies_each_mediapipe_landmark_to_its_body25_joint_in_pixels():
    lm = _landmarks()
    kp = mediapipe_to_body25(lm, W, H)
    assert kp.shape == (25, 3) and kp.dtype == np.float32, f"got {kp.shape} {kp.dtype}"
    for joint, mp_index in EXPECTED_MAP.items():
        assert kp[joint, 0] == pytest.approx(lm[mp_index, 0]) and kp[joint, 1] == pytest.approx(lm[mp_index, 1]), (
            f"BODY_25 {Body25(joint).name} should be MediaPipe landmark {mp_index} at {lm[mp_index, :2]}, "
            f"got {kp[joint, :2]}"
        )
        assert kp[joint, 2] == pytest.approx(0.9), f"{Body25(joint).name} confidence should be the visibility"


def test_neck_is_the_shoulder_midpoint_with_the_smaller_visibility():
    lm = _landmarks()
    lm[11] = (500, 300, 0, 0.8)  # left shoulder
    lm[12] = (300, 320, 0, 0.6)  # right shoulder
    kp = mediapipe_to_body25(lm, W, H)
    np.testing.assert_allclose(kp[Body25.NECK], (400, 310, 0.6), rtol=1e-6, err_msg="neck = midpoint, min visibility")


def test_midhip_is_the_hip_midpoint_with_the_smaller_visibility():
    lm = _landmarks()
    lm[23] = (450, 700, 0, 0.7)  # left hip
    lm[24] = (250, 720, 0, 0.95)  # right hip
    kp = mediapipe_to_body25(lm, W, H)
    np.testing.assert_allclose(kp[Body25.MID_HIP], (350, 710, 0.7), rtol=1e-6, err_msg="midhip = midpoint, min vis")


def test_a_midpoint_is_missing_when_either_parent_is_below_the_threshold():
    lm = _landmarks()
    lm[12, 3] = 0.05  # right shoulder hidden, below even the torso threshold
    kp = mediapipe_to_body25(lm, W, H, visibility_threshold=0.5, torso_visibility_threshold=0.1)
    assert kp[Body25.NECK].tolist() == [0, 0, 0], f"neck with a hidden parent should be 0,0,0, got {kp[Body25.NECK]}"
    assert kp[Body25.MID_HIP, 2] > 0, "midhip (both parents visible) should still be present"


def test_a_faint_hip_is_kept_with_its_low_visibility_as_confidence_as_openpose_keeps_it():
    lm = _landmarks()
    lm[24, 3] = 0.3  # right hip, below the visibility threshold, above the torso one
    kp = mediapipe_to_body25(lm, W, H, visibility_threshold=0.5, torso_visibility_threshold=0.1)
    np.testing.assert_allclose(kp[Body25.R_HIP], (lm[24, 0], lm[24, 1], 0.3), rtol=1e-6,
                               err_msg="a hip the agnostic needs is kept, its confidence saying how sure")
    assert kp[Body25.MID_HIP, 2] == pytest.approx(0.3), "midhip takes the smaller confidence of its hips"


def test_a_faint_shoulder_is_kept_and_so_is_the_neck():
    lm = _landmarks()
    lm[11, 3] = 0.2  # left shoulder
    kp = mediapipe_to_body25(lm, W, H, visibility_threshold=0.5, torso_visibility_threshold=0.1)
    assert kp[Body25.L_SHOULDER, 2] == pytest.approx(0.2) and kp[Body25.NECK, 2] == pytest.approx(0.2), (
        f"shoulder {kp[Body25.L_SHOULDER]}, neck {kp[Body25.NECK]}: both kept at the shoulder's confidence")


def test_a_faint_wrist_is_still_missing_because_only_torso_joints_get_the_lower_threshold():
    lm = _landmarks()
    lm[16, 3] = 0.3  # right wrist: the agnostic would draw an arm to it
    kp = mediapipe_to_body25(lm, W, H, visibility_threshold=0.5, torso_visibility_threshold=0.1)
    assert kp[Body25.R_WRIST].tolist() == [0, 0, 0], f"a faint wrist must stay missing, got {kp[Body25.R_WRIST]}"


def test_a_torso_joint_below_the_torso_threshold_is_missing():
    lm = _landmarks()
    lm[23, 3] = 0.05  # left hip: MediaPipe's guess for a hip far outside the photo
    kp = mediapipe_to_body25(lm, W, H, visibility_threshold=0.5, torso_visibility_threshold=0.1)
    assert kp[Body25.L_HIP].tolist() == [0, 0, 0] and kp[Body25.MID_HIP].tolist() == [0, 0, 0]


def test_the_torso_threshold_is_never_stricter_than_the_visibility_threshold():
    lm = _landmarks()
    lm[23, 3] = 0.3
    kp = mediapipe_to_body25(lm, W, H, visibility_threshold=0.2, torso_visibility_threshold=0.4)
    assert kp[Body25.L_HIP, 2] == pytest.approx(0.3), "a hip any other joint would keep is kept"


def test_a_hip_just_below_the_frame_is_placed_on_the_last_row_with_less_confidence():
    lm = _landmarks()
    lm[24] = (300, H + 50, 0, 0.9)  # right hip 51 rows below the last one: a crop at the waist
    kp = mediapipe_to_body25(lm, W, H)
    margin = HIP_BELOW_FRAME_MARGIN * H
    np.testing.assert_allclose(kp[Body25.R_HIP], (300, H - 1, 0.9 * (1 - 51 / margin)), rtol=1e-5,
                               err_msg="on the last row, its confidence falling with the distance it was moved")
    assert kp[Body25.MID_HIP, 1] == pytest.approx((H - 1 + lm[23, 1]) / 2), "midhip between the hips as written"


def test_a_moved_hip_keeps_at_least_the_torso_threshold_as_confidence():
    lm = _landmarks()
    lm[24] = (300, H - 2 + HIP_BELOW_FRAME_MARGIN * H, 0, 0.2)  # at the edge of the margin, faint
    kp = mediapipe_to_body25(lm, W, H)
    assert kp[Body25.R_HIP, 1] == H - 1, f"still within the margin, got {kp[Body25.R_HIP]}"
    assert kp[Body25.R_HIP, 2] == pytest.approx(DEFAULT_TORSO_VISIBILITY_THRESHOLD), (
        "kept by the torso threshold, written with at least that confidence (so it is drawn and read)")


def test_a_hip_far_below_the_frame_is_missing():
    lm = _landmarks()
    lm[24] = (300, H + HIP_BELOW_FRAME_MARGIN * H, 0, 0.99)  # just past the margin, however "visible"
    kp = mediapipe_to_body25(lm, W, H)
    assert kp[Body25.R_HIP].tolist() == [0, 0, 0], f"a hip far below the photo is no hip of it, got {kp[Body25.R_HIP]}"


def test_only_hips_are_moved_onto_the_last_row():
    lm = _landmarks()
    lm[12, :2] = (300, H + 10)  # right shoulder below the frame: no torso in the photo
    lm[26, :2] = (300, H + 10)  # right knee
    kp = mediapipe_to_body25(lm, W, H)
    assert kp[Body25.R_SHOULDER].tolist() == [0, 0, 0] and kp[Body25.R_KNEE].tolist() == [0, 0, 0]


def test_a_hip_beside_the_frame_is_missing():
    lm = _landmarks()
    lm[24, :2] = (-3, H + 10)  # below and left of the frame
    kp = mediapipe_to_body25(lm, W, H)
    assert kp[Body25.R_HIP].tolist() == [0, 0, 0], f"only a hip straight below the photo moves, got {kp[Body25.R_HIP]}"


def test_a_joint_below_the_visibility_threshold_is_written_as_zeros():
    lm = _landmarks()
    lm[16, 3] = 0.49  # right wrist
    kp = mediapipe_to_body25(lm, W, H, visibility_threshold=0.5)
    assert kp[Body25.R_WRIST].tolist() == [0, 0, 0], f"hidden right wrist should be 0,0,0, got {kp[Body25.R_WRIST]}"
    assert kp[Body25.L_WRIST, 2] > 0, "the visible left wrist should stay"


def test_a_joint_outside_the_image_is_written_as_zeros():
    lm = _landmarks()
    lm[26, :2] = (300, H + 40)  # right knee below the frame, yet "visible"
    lm[15, :2] = (-5, 600)  # left wrist left of the frame
    kp = mediapipe_to_body25(lm, W, H)
    assert kp[Body25.R_KNEE].tolist() == [0, 0, 0], f"out-of-frame knee should be 0,0,0, got {kp[Body25.R_KNEE]}"
    assert kp[Body25.L_WRIST].tolist() == [0, 0, 0], f"out-of-frame wrist should be 0,0,0, got {kp[Body25.L_WRIST]}"


def test_small_toes_are_always_zeros_because_mediapipe_has_none():
    kp = mediapipe_to_body25(_landmarks(visibility=1.0), W, H)
    assert kp[Body25.L_SMALL_TOE].tolist() == [0, 0, 0] and kp[Body25.R_SMALL_TOE].tolist() == [0, 0, 0]


def test_mapping_rejects_landmarks_of_the_wrong_shape():
    with pytest.raises(ValueError, match="33"):
        mediapipe_to_body25(np.zeros((25, 4)), W, H)


# ---------------------------------------------------------------------------------------------------
# OpenPose JSON
# ---------------------------------------------------------------------------------------------------


def _body25(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kp = np.zeros((25, 3), dtype=np.float32)
    kp[:, 0] = rng.uniform(0, W, 25)
    kp[:, 1] = rng.uniform(0, H, 25)
    kp[:, 2] = rng.uniform(0.5, 1.0, 25)
    kp[[Body25.L_SMALL_TOE, Body25.R_SMALL_TOE]] = 0
    return kp


def test_openpose_json_is_version_1_3_with_one_body25_person_of_75_plain_floats():
    doc = openpose_json(_body25())
    assert doc["version"] == OPENPOSE_JSON_VERSION == 1.3
    assert len(doc["people"]) == 1, "one person per image"
    person = doc["people"][0]
    assert person["person_id"] == [-1]
    assert len(person["pose_keypoints_2d"]) == 75, "BODY_25 is 25 x (x, y, confidence)"
    assert all(type(v) is float for v in person["pose_keypoints_2d"]), "values must be plain Python floats"
    for key in ("face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "pose_keypoints_3d",
                "face_keypoints_3d", "hand_left_keypoints_3d", "hand_right_keypoints_3d"):  # fmt: skip
        assert person[key] == [], f"{key} should be present and empty"
    json.dumps(doc)  # serialisable as is


def test_openpose_json_round_trips_through_text():
    kp = _body25(1)
    back = keypoints_from_openpose_json(json.loads(json.dumps(openpose_json(kp))))
    assert back.shape == (25, 3) and back.dtype == np.float32
    np.testing.assert_allclose(back, kp, atol=1e-3, err_msg="keypoints changed on the JSON round trip")


def test_reading_json_rejects_coco18_and_empty_people():
    coco = {"version": 1.3, "people": [{"pose_keypoints_2d": [0.0] * 54}]}
    with pytest.raises(ValueError, match="BODY_25"):
        keypoints_from_openpose_json(coco)
    with pytest.raises(ValueError, match="no person"):
        keypoints_from_openpose_json({"version": 1.3, "people": []})


# ---------------------------------------------------------------------------------------------------
# Rendered skeleton
# ---------------------------------------------------------------------------------------------------


def _right_arm_only() -> np.ndarray:
    """Neck, right shoulder and right elbow present; the right wrist (and everything else) missing."""
    kp = np.zeros((25, 3), dtype=np.float32)
    kp[Body25.NECK] = (400, 300, 0.9)
    kp[Body25.R_SHOULDER] = (300, 310, 0.9)
    kp[Body25.R_ELBOW] = (280, 520, 0.9)
    return kp


def test_render_is_an_rgb_uint8_image_on_black():
    img = render_body25(_right_arm_only())
    assert img.shape == (H, W, 3) and img.dtype == np.uint8, f"got {img.shape} {img.dtype}"
    assert img[0, 0].tolist() == [0, 0, 0] and img[H - 1, W - 1].tolist() == [0, 0, 0], "background must be black"
    assert (img.any(axis=2)).mean() < 0.05, "only the skeleton should be drawn"


def test_render_colours_a_limb_with_openpose_rgb_colour_of_its_second_keypoint():
    img = render_body25(_right_arm_only())
    # Limb 2-3 (right shoulder -> right elbow) takes keypoint 3's colour, RGB (255, 170, 0) (orange).
    mid = img[(310 + 520) // 2, (300 + 280) // 2]
    assert mid.tolist() == [255, 170, 0], f"right upper arm midpoint should be OpenPose orange (RGB), got {mid}"
    # Limb 1-2 (neck -> right shoulder) takes keypoint 2's colour, RGB (255, 85, 0).
    mid = img[(300 + 310) // 2, (400 + 300) // 2]
    assert mid.tolist() == [255, 85, 0], f"neck-shoulder midpoint should be RGB (255, 85, 0), got {mid}"


def test_render_draws_each_keypoint_circle_in_its_own_colour():
    img = render_body25(_right_arm_only())
    assert img[310, 300].tolist() == [255, 85, 0], "right shoulder circle: keypoint 2's colour"
    assert img[300, 400].tolist() == [255, 0, 0], "neck circle: keypoint 1's colour"


def test_render_draws_nothing_for_a_missing_joint():
    img = render_body25(_right_arm_only())
    wrist_colour = np.array([255, 255, 0])  # keypoint 4 (right wrist) and limb 3-4
    assert not np.any(np.all(img == wrist_colour, axis=2)), "the missing right wrist must not be drawn"
    assert img[:20, :20].max() == 0, "no limb may run to the origin (0, 0)"


def test_render_of_no_keypoints_is_all_black():
    assert render_body25(np.zeros((25, 3), np.float32)).max() == 0


# ---------------------------------------------------------------------------------------------------
# Choosing a person (pure)
# ---------------------------------------------------------------------------------------------------


def test_choose_person_prefers_the_clearly_bigger_box_even_off_centre():
    big_off_centre = (20, 300, 220, 560)
    small_central = (354, 480, 414, 540)
    assert choose_person([small_central, big_off_centre], W, H) == 1


def test_choose_person_prefers_the_central_box_among_equal_sizes():
    corner, centre = (0, 0, 100, 100), (334, 462, 434, 562)
    assert choose_person([corner, centre], W, H) == 1


# ---------------------------------------------------------------------------------------------------
# The estimator on real photos
# ---------------------------------------------------------------------------------------------------


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def estimator():
    with PoseEstimator() as est:
        yield est


@pytest.fixture(scope="module")
def sample_images(samples_dir) -> dict[str, np.ndarray]:
    paths = sorted((samples_dir / "image").glob("*.jpg"))
    assert paths, "no sample person photos"
    return {p.name: _read_rgb(p) for p in paths}


@pytest.fixture(scope="module")
def sample_poses(estimator, sample_images) -> dict[str, PoseResult]:
    return {name: estimator.estimate(img) for name, img in sample_images.items()}


def test_sample_photos_have_every_keypoint_the_agnostic_masks_need(sample_poses):
    for name, result in sample_poses.items():
        missing = [Body25(j).name for j in AGNOSTIC_REQUIRED_KEYPOINTS if result.keypoints_body25[j, 2] <= 0]
        assert not missing, f"{name}: missing {missing}"


def test_sample_photos_have_shoulders_above_hips(sample_poses):
    for name, result in sample_poses.items():
        kp = result.keypoints_body25
        lowest_shoulder = max(kp[Body25.R_SHOULDER, 1], kp[Body25.L_SHOULDER, 1])
        highest_hip = min(kp[Body25.R_HIP, 1], kp[Body25.L_HIP, 1])
        assert lowest_shoulder < highest_hip, f"{name}: shoulders {kp[[2, 5], 1]} should be above hips {kp[[9, 12], 1]}"
        assert kp[Body25.R_SHOULDER, 0] < kp[Body25.L_SHOULDER, 0], f"{name}: right shoulder on image left"


def test_sample_photo_keypoints_lie_inside_the_image_and_mostly_inside_the_person_mask(sample_poses):
    for name, result in sample_poses.items():
        kp = result.keypoints_body25
        present = kp[kp[:, 2] > 0]
        assert np.all((present[:, 0] >= 0) & (present[:, 0] < W) & (present[:, 1] >= 0) & (present[:, 1] < H)), name
        seg = result.segmentation
        assert seg is not None and seg.shape == (H, W) and seg.dtype == np.float32, f"{name}: segmentation {seg}"
        inside = seg[present[:, 1].astype(int), present[:, 0].astype(int)] > 0.5
        assert inside.mean() >= 0.8, f"{name}: only {inside.mean():.0%} of keypoints inside the person mask"


def test_sample_photos_hold_exactly_one_person(sample_poses):
    counts = {name: r.persons_detected for name, r in sample_poses.items()}
    assert all(c == 1 for c in counts.values()), f"each sample shows one person: {counts}"


def test_sample_pose_landmarks_are_in_pixels(sample_poses):
    for name, result in sample_poses.items():
        lm = result.landmarks_px
        assert lm.shape == (33, 4) and lm.dtype == np.float32
        assert lm[11, 0] > 1 and lm[11, 1] > 1, f"{name}: landmarks look normalised, not pixels: {lm[11]}"


def test_person_box_holds_the_torso_keypoints(estimator, sample_images, sample_poses):
    name = next(iter(sample_images))
    box = estimator.person_box(sample_images[name])
    assert box is not None, "a person is in the photo"
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H, f"box {box} must lie inside the image"
    kp = sample_poses[name].keypoints_body25
    for joint in AGNOSTIC_REQUIRED_KEYPOINTS:
        x, y = kp[joint, :2]
        assert x0 <= x < x1 and y0 <= y < y1, f"{Body25(joint).name} {x, y} outside the person box {box}"
    assert (x1 - x0) < W or (y1 - y0) < H, "the box should be tighter than the whole image"


def test_a_blank_grey_image_has_no_person(estimator):
    grey = np.full((H, W, 3), 128, dtype=np.uint8)
    with pytest.raises(ItemError) as err:
        estimator.estimate(grey)
    assert err.value.code == NO_PERSON
    assert estimator.person_box(grey) is None, "person_box reports 'no person' as None"


def test_estimate_rejects_an_image_that_is_not_hxwx3_uint8(estimator):
    with pytest.raises(ValueError, match="uint8"):
        estimator.estimate(np.zeros((H, W), dtype=np.float32))


@pytest.mark.parametrize("big_on_left", [True, False], ids=["big-left", "big-right"])
def test_two_people_are_counted_and_the_bigger_one_is_posed(estimator, sample_images, big_on_left):
    first, second = list(sample_images.values())[:2]
    canvas = np.full((H, W, 3), 235, dtype=np.uint8)

    def paste(img: np.ndarray, scale: float, on_left: bool) -> tuple[int, int, int, int]:
        small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        h, w = small.shape[:2]
        x0 = 10 if on_left else W - w - 10
        canvas[H - h :, x0 : x0 + w] = small
        return x0, H - h, x0 + w, H

    big = paste(first, 0.6, on_left=big_on_left)
    paste(second, 0.4, on_left=not big_on_left)
    result = estimator.estimate(canvas)
    assert result.persons_detected == 2, f"two people pasted, {result.persons_detected} detected"
    kp = result.keypoints_body25
    for joint in (Body25.NECK, Body25.R_SHOULDER, Body25.L_SHOULDER, Body25.R_HIP, Body25.L_HIP):
        x, y, c = kp[joint]
        assert c > 0 and big[0] <= x < big[2] and big[1] <= y < big[3], (
            f"{joint.name} at {x:.0f},{y:.0f} should be on the bigger person {big}"
        )
    seg = result.segmentation
    assert seg is not None and seg.shape == (H, W), "the mask covers the full image"
    assert seg[:, big[0] : big[2]].sum() > 0.9 * seg.sum(), "the mask is of the chosen (bigger) person"


def _cut_out(estimator, image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The person of a photo, scaled: (RGB, alpha 0..1) from the pose model's own mask."""
    alpha = estimator.estimate(image).segmentation
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return small, cv2.resize(alpha, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)


def _count_passes(estimator, monkeypatch) -> list[int]:
    calls = []
    run = estimator._solutions_pose
    monkeypatch.setattr(estimator, "_solutions_pose", lambda image: calls.append(1) or run(image))
    return calls


def test_a_studio_photo_of_one_person_costs_one_pose_pass(estimator, sample_images, monkeypatch):
    calls = _count_passes(estimator, monkeypatch)
    for name, image in sample_images.items():
        calls.clear()
        assert estimator.estimate(image).persons_detected == 1
        assert len(calls) == 1, f"{name}: {len(calls)} pose passes on a plain backdrop"


def test_two_people_on_one_plain_backdrop_are_both_counted(estimator, sample_images, monkeypatch):
    canvas = np.full((H, W, 3), 228, dtype=np.float32)
    (first, first_alpha), (second, second_alpha) = (
        _cut_out(estimator, image, 0.62) for image in list(sample_images.values())[:2])
    for (person, alpha), x0 in (((first, first_alpha), 0), ((second, second_alpha), W - second.shape[1])):
        h, w = person.shape[:2]
        window = canvas[H - h :, x0 : x0 + w]
        window[:] = alpha[..., None] * person + (1 - alpha[..., None]) * window
    calls = _count_passes(estimator, monkeypatch)
    result = estimator.estimate(np.round(canvas).astype(np.uint8))
    assert result.persons_detected == 2, f"two people on one backdrop, {result.persons_detected} counted"
    assert len(calls) >= 2, "the second person was found without looking again"


# ---------------------------------------------------------------------------------------------------
# VITON-HD photos the dataset's own preprocessing handled (../shared/groundtruth/vitonhd-rejected), and photos
# with no usable torso
# ---------------------------------------------------------------------------------------------------

REJECTED = ("00482_00.jpg", "03052_00.jpg", "00802_00.jpg")  # hips past the edge, a faint hip, a missed person


@pytest.fixture(scope="module")
def rejected_poses(estimator, rejected_dir) -> dict[str, tuple[np.ndarray, PoseResult]]:
    images = {name: _read_rgb(rejected_dir / name) for name in REJECTED}
    return {name: (image, estimator.estimate(image)) for name, image in images.items()}


@pytest.mark.parametrize("name", REJECTED)
def test_a_vitonhd_photo_yields_both_hips_shoulders_and_neck_inside_the_image(rejected_poses, name):
    _, result = rejected_poses[name]
    kp = result.keypoints_body25
    for joint in AGNOSTIC_REQUIRED_KEYPOINTS:
        x, y, c = kp[joint]
        assert c > 0 and 0 <= x < W and 0 <= y < H, f"{name}: {Body25(joint).name} is {kp[joint].tolist()}"
    check_agnostic_keypoints(kp)
    assert kp[Body25.MID_HIP, 1] - kp[Body25.NECK, 1] > 0.3 * H, f"{name}: the torso runs down the photo: {kp[[1, 8]]}"


@pytest.mark.parametrize("name", REJECTED)
def test_the_agnostic_masks_compute_on_a_vitonhd_photo(rejected_poses, name):
    image, result = rejected_poses[name]
    kp = result.keypoints_body25
    background = np.zeros((H, W), np.uint8)
    assert parse_agnostic(background, kp).shape == (H, W)
    agnostic = image_agnostic(image, background, kp)
    centre = np.round((kp[Body25.NECK, :2] + kp[Body25.MID_HIP, :2]) / 2).astype(int)
    assert agnostic[centre[1], centre[0]].tolist() == list(GRAY), f"{name}: the torso at {centre} is not grayed"


def test_hips_at_the_bottom_edge_are_written_on_it_with_a_low_confidence(rejected_poses):
    kp = rejected_poses["00482_00.jpg"][1].keypoints_body25  # MediaPipe puts both hips 50-80 px below the photo
    for hip in (Body25.R_HIP, Body25.L_HIP):
        assert kp[hip, 1] == H - 1 and DEFAULT_TORSO_VISIBILITY_THRESHOLD <= kp[hip, 2] < 0.6, (
            f"{hip.name} {kp[hip].tolist()}: on the last row, with OpenPose's kind of low confidence")


def test_a_faint_hip_inside_the_photo_is_kept_where_mediapipe_put_it(rejected_poses):
    result = rejected_poses["03052_00.jpg"][1]
    kp, lm = result.keypoints_body25, result.landmarks_px
    assert DEFAULT_TORSO_VISIBILITY_THRESHOLD <= kp[Body25.L_HIP, 2] < 0.5, f"L_HIP {kp[Body25.L_HIP].tolist()}"
    np.testing.assert_allclose(kp[Body25.L_HIP, :2], lm[23, :2], err_msg="a faint hip is not moved")


def test_a_person_the_first_look_misses_is_found_on_the_image_padded_to_a_square(estimator, rejected_dir,
                                                                                monkeypatch):
    image = _read_rgb(rejected_dir / "00802_00.jpg")
    calls = _count_passes(estimator, monkeypatch)
    result = estimator.estimate(image)
    assert len(calls) == 2 and result.persons_detected == 1, f"{len(calls)} passes, {result.persons_detected} people"
    backdrop = np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]), axis=0).astype(np.uint8)
    canvas, (x0, y0) = pad_to_square(image, SECOND_LOOK_MARGIN, backdrop)
    direct = estimator._solutions_pose(canvas)[0]
    np.testing.assert_allclose(result.landmarks_px[:, :2], direct[:, :2] - (x0, y0), atol=1e-3,
                               err_msg="the second look's landmarks are the padded image's, shifted back exactly")
    assert result.segmentation.shape == (H, W), "the mask is cut back to the image"


def _refusal(estimator, image: np.ndarray) -> ItemError | None:
    """What the pose stage says of the image: its ItemError, or None when the agnostic has its joints."""
    try:
        check_agnostic_keypoints(estimator.estimate(image).keypoints_body25)
    except ItemError as error:
        return error
    return None


def test_a_head_and_shoulders_portrait_is_refused_for_its_missing_hips(estimator, sample_images):
    for name, image in sample_images.items():
        portrait = cv2.resize(image[: H // 2, W // 4 : 3 * W // 4], (W, H), interpolation=cv2.INTER_AREA)  # 3:4
        error = _refusal(estimator, portrait)
        assert error is not None and error.code == MISSING_KEYPOINTS and "HIP" in error.message, (
            f"{name}: the hips lie far below a head-and-shoulders portrait, got {error}")


def test_a_photo_of_legs_only_is_refused(estimator, sample_images, monkeypatch):
    calls = _count_passes(estimator, monkeypatch)
    for name, image in sample_images.items():
        calls.clear()
        error = _refusal(estimator, np.ascontiguousarray(image[H // 2 + H // 20 :]))  # from about the hips down
        assert error is not None, f"{name}: a photo of legs has no torso to dress"
        if error.code == NO_PERSON:
            assert len(calls) == 2, f"{name}: nobody found in {len(calls)} passes: the second look was not taken"
        else:
            assert error.code == MISSING_KEYPOINTS and "SHOULDER" in error.message, f"{name}: {error}"


def test_backend_id_names_mediapipe_and_the_model(estimator):
    assert estimator.backend_id.startswith("mediapipe-0.10.21/") and "pose_landmark_full" in estimator.backend_id


def test_a_missing_task_model_file_is_reported_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.task"):
        PoseEstimator(task_model_path=str(tmp_path / "nope.task"))


# ---------------------------------------------------------------------------------------------------
# The npz cache
# ---------------------------------------------------------------------------------------------------


def test_npz_round_trip_keeps_keypoints_landmarks_count_and_mask(sample_poses):
    result = next(iter(sample_poses.values()))
    back = pose_from_npz_bytes(pose_to_npz_bytes(result))
    np.testing.assert_array_equal(back.keypoints_body25, result.keypoints_body25)
    np.testing.assert_array_equal(back.landmarks_px, result.landmarks_px)
    assert back.persons_detected == result.persons_detected
    assert back.segmentation.dtype == np.float32 and back.segmentation.shape == result.segmentation.shape
    assert np.abs(back.segmentation - result.segmentation).max() <= 0.5 / 255 + 1e-6, "mask kept to 8 bits"


def test_npz_round_trip_without_segmentation():
    result = PoseResult(_body25(), np.zeros((33, 4), np.float32), None, 3)
    back = pose_from_npz_bytes(pose_to_npz_bytes(result))
    assert back.segmentation is None and back.persons_detected == 3
    np.testing.assert_array_equal(back.keypoints_body25, result.keypoints_body25)


def test_npz_is_small_because_the_mask_is_stored_as_8_bits(sample_poses):
    result = next(iter(sample_poses.values()))
    assert len(pose_to_npz_bytes(result)) < 200_000, "a 768x1024 float mask would be 3 MB"


def test_reading_bytes_that_are_not_a_pose_npz_raises_value_error():
    with pytest.raises(ValueError):
        pose_from_npz_bytes(b"not an npz")


def test_joints_in_the_padding_around_a_photo_are_missing():
    """A portrait padded onto the canvas: hips guessed into the padding must not count as seen."""
    landmarks = np.zeros((33, 4), np.float32)
    landmarks[:, 3] = 0.99
    landmarks[:, 0] = 384
    landmarks[:, 1] = 300
    landmarks[[23, 24], 1] = 950  # hips, below the photo
    landmarks[23, 0], landmarks[24, 0] = 420, 340
    keypoints = mediapipe_to_body25(landmarks, 768, 1024, 0.5, valid_box=(0, 128, 768, 896))
    assert keypoints[Body25.R_HIP].tolist() == [0, 0, 0] and keypoints[Body25.L_HIP].tolist() == [0, 0, 0]
    assert keypoints[Body25.MID_HIP].tolist() == [0, 0, 0], "a midpoint of missing hips must be missing"
    assert keypoints[Body25.NOSE][2] > 0, "joints inside the photo are kept"


def test_a_hip_below_a_padded_photo_is_missing_even_past_the_canvas():
    """The photo ends above the canvas's bottom edge: a hip below the canvas is below the padding too."""
    landmarks = _landmarks(visibility=0.99)
    landmarks[[23, 24], 1] = H + 10
    keypoints = mediapipe_to_body25(landmarks, W, H, 0.5, valid_box=(0, 128, W, 896))
    assert keypoints[Body25.R_HIP].tolist() == [0, 0, 0] and keypoints[Body25.L_HIP].tolist() == [0, 0, 0]


def test_a_hip_below_a_photo_padded_at_its_sides_only_is_moved_onto_the_last_row():
    """A narrow photo padded left and right still reaches the canvas's bottom edge: its hips are the frame's."""
    landmarks = _landmarks(visibility=0.99)
    landmarks[[23, 24], 1] = H + 10
    keypoints = mediapipe_to_body25(landmarks, W, H, 0.5, valid_box=(64, 0, 704, H))
    assert keypoints[Body25.R_HIP, 1] == H - 1 and keypoints[Body25.L_HIP, 1] == H - 1, keypoints[[9, 12]]


# ---------------------------------------------------------------------------------------------------
# The second look: padded to a square
# ---------------------------------------------------------------------------------------------------


def test_pad_to_square_centres_the_image_on_the_colour_with_the_margin_all_round():
    image = np.full((40, 30, 3), 7, np.uint8)
    canvas, (x0, y0) = pad_to_square(image, 0.1, np.array([200, 201, 202], np.uint8))
    assert canvas.shape == (48, 48, 3) and (x0, y0) == (9, 4), f"{canvas.shape}, offset {(x0, y0)}"
    assert np.all(canvas[y0 : y0 + 40, x0 : x0 + 30] == 7) and canvas[0, 0].tolist() == [200, 201, 202]


def test_unpad_pose_maps_landmarks_and_mask_back_to_the_image_pixels():
    landmarks = np.zeros((33, 4), np.float32)
    landmarks[0] = (19.5, 24.25, -0.2, 0.9)  # on the canvas: image pixel (10.5, 20.25)
    mask = np.zeros((48, 48), np.float32)
    mask[4 + 20, 9 + 10] = 1.0
    back, back_mask = unpad_pose(landmarks, mask, (9, 4), 48, 30, 40)
    np.testing.assert_allclose(back[0], (10.5, 20.25, -0.2 * 48 / 30, 0.9), rtol=1e-6)
    assert back_mask.shape == (40, 30) and back_mask[20, 10] == 1.0 and back_mask.sum() == 1.0


# ---------------------------------------------------------------------------------------------------
# Images over MediaPipe's size limit (fit=crop searches the source itself, at any size the config admits)
# ---------------------------------------------------------------------------------------------------


def test_pose_input_size_keeps_an_image_within_the_limit_and_shrinks_a_longer_one_to_it():
    assert pose_input_size(W, H) == (W, H) and pose_input_size(3072, MAX_POSE_SIDE) == (3072, MAX_POSE_SIDE)
    assert pose_input_size(24000, 200) == (MAX_POSE_SIDE, 34), "aspect kept, longer side at the limit"
    assert pose_input_size(200, 40000) == (20, MAX_POSE_SIDE)
    assert pose_input_size(1_000_000, 64) == (MAX_POSE_SIDE, 1), "a side never shrinks to nothing"


def test_scale_box_moves_each_edge_outward_to_whole_pixels():
    assert scale_box((1, 2, 3, 4), (4096, 34), (24000, 200)) == (5, 11, 18, 24), "floor the start, ceil the end"
    assert scale_box((0, 0, 4096, 34), (4096, 34), (24000, 200)) == (0, 0, 24000, 200), "the whole image stays whole"
    assert scale_box((143, 0, 577, 1024), (W, H), (W, H)) == (143, 0, 577, 1024), "the same size: the same box"


def _seen_sides(estimator, monkeypatch) -> list[tuple[int, int]]:
    """Every image size the pose graph is handed from now on; one over the limit fails the test instead of
    reaching MediaPipe (which would kill pytest)."""
    seen = []
    run = estimator._solutions_pose

    def checked(image):
        seen.append(image.shape[:2])
        assert max(image.shape[:2]) <= 1.2 * MAX_POSE_SIDE + 1, f"MediaPipe was handed {image.shape[:2]}"
        return run(image)

    monkeypatch.setattr(estimator, "_solutions_pose", checked)
    return seen


@pytest.mark.parametrize("width, height", [(24000, 200), (200, 40000), (1_000_000, 64)])
def test_the_person_search_on_an_extreme_source_never_hands_mediapipe_a_side_over_the_limit(
    estimator, monkeypatch, width, height
):
    source = np.full((height, width, 3), 235, np.uint8)
    source[height // 4 : 3 * height // 4, width // 2 - 60 : width // 2 + 60] = (40, 60, 90)  # some content
    seen = _seen_sides(estimator, monkeypatch)
    box = estimator.person_box(source)
    assert seen, "the pose graph ran"
    if box is not None:
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, f"box {box} outside the {width}x{height} source"


@pytest.fixture(scope="module")
def photo_and_five_times(sample_images) -> tuple[np.ndarray, np.ndarray]:
    """A sample photo, and the same photo 5x larger (3840x5120: over MAX_POSE_SIDE)."""
    photo = next(iter(sample_images.values()))
    return photo, cv2.resize(photo, (5 * W, 5 * H), interpolation=cv2.INTER_CUBIC)


def test_the_person_box_of_a_photo_within_the_limit_is_unchanged(estimator, sample_images, photo_and_five_times):
    photo = photo_and_five_times[0]
    at_limit = cv2.resize(photo, (3 * W, 3 * H), interpolation=cv2.INTER_CUBIC)  # 3072x4096: exactly at the limit
    for name, image in [*sample_images.items(), ("3072x4096", at_limit)]:
        assert shrink_for_pose(image) is image, f"{name}: an image within the limit is handed over untouched"
        height, width = image.shape[:2]
        direct = box_from_pose(estimator.estimate(image), width, height, estimator.visibility_threshold)
        assert estimator.person_box(image) == direct, f"{name}: the box is the one computed on the image itself"


def test_the_person_box_of_a_photo_over_the_limit_is_found_shrunk_and_given_in_its_pixels(
    estimator, photo_and_five_times, monkeypatch
):
    photo, large = photo_and_five_times
    expected = np.array(estimator.person_box(photo)) * 5
    seen = _seen_sides(estimator, monkeypatch)
    box = estimator.person_box(large)
    assert seen and all(max(shape) <= MAX_POSE_SIDE for shape in seen), f"MediaPipe was handed {seen}"
    assert box is not None and 0 <= box[0] < box[2] <= 5 * W and 0 <= box[1] < box[3] <= 5 * H, f"box {box}"
    assert np.abs(np.array(box) - expected).max() <= 3 * 5, f"box {box} vs 5x the photo's {expected.tolist()}"


def test_a_pose_estimated_on_a_photo_over_the_limit_is_the_shrunk_photos_in_its_pixels(estimator,
                                                                                       photo_and_five_times):
    large = photo_and_five_times[1]
    shrunk = shrink_for_pose(large)
    assert shrunk.shape[:2] == (MAX_POSE_SIDE, 3072), f"shrunk to {shrunk.shape[:2]}"
    result, seen = estimator.estimate(large), estimator.estimate(shrunk)
    np.testing.assert_allclose(result.landmarks_px[:, :2], seen.landmarks_px[:, :2] * 1.25, rtol=1e-5, atol=1e-3,
                               err_msg="the landmarks MediaPipe found on the shrunk photo, scaled to the photo's pixels")
    assert result.segmentation.shape == large.shape[:2], "the mask is as large as the photo"
    assert result.persons_detected == seen.persons_detected == 1
