"""tasks/stages/agnostic.py against hand-checked synthetic fixtures (contract §1.6, §1.7, §2.3, §2.4).

The standard fixture is a front-facing person on the 768x1024 canvas. Keypoints (x, y):

    neck (384, 250); shoulders R (259, 260), L (509, 260): 250 px apart, so HR-VITON r = 16;
    elbows R (230, 420), L (538, 420); wrists R (230, 560), L (538, 560) (vertical forearms);
    hips R (324, 560), L (444, 560): 120 px apart, normalised to R (259, 560), L (509, 560).

The parse map is painted rectangles (rows y0:y1, columns x0:x1, see `_standard_parse`); the arms run
from the shoulders down to y = 780, far past the wrists, so the hands lie outside every drawn zone.
Distances quoted in the tests are computed from these numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from vitonhd_models.agnostic import (
    AGNOSTIC_RECIPES,
    GRAY,
    check_agnostic_keypoints,
    image_agnostic,
    parse_agnostic,
)
from vitonhd_models.contract import IMAGE_HEIGHT, IMAGE_WIDTH, Body25, Cihp
from vitonhd_models.errors import MISSING_KEYPOINTS, ZERO_HIP_WIDTH, ItemError

H, W = IMAGE_HEIGHT, IMAGE_WIDTH
GRAY_PIXEL = np.array(GRAY, dtype=np.uint8)

# Labels the parse agnostic zeroes wholesale, and the arm labels it zeroes near the skeleton.
ZEROED_LABELS = (Cihp.UPPER_CLOTHES, Cihp.DRESS, Cihp.COAT, Cihp.TORSO_SKIN)
ARM_LABELS = (Cihp.LEFT_ARM, Cihp.RIGHT_ARM)
RESTORED_LABELS = (
    Cihp.SUNGLASSES,
    Cihp.FACE,
    Cihp.PANTS,
    Cihp.SKIRT,
    Cihp.LEFT_LEG,
    Cihp.RIGHT_LEG,
    Cihp.LEFT_SHOE,
    Cihp.RIGHT_SHOE,
)

STANDARD_POSE = {
    Body25.NOSE: (384, 150),
    Body25.NECK: (384, 250),
    Body25.R_SHOULDER: (259, 260),
    Body25.R_ELBOW: (230, 420),
    Body25.R_WRIST: (230, 560),
    Body25.L_SHOULDER: (509, 260),
    Body25.L_ELBOW: (538, 420),
    Body25.L_WRIST: (538, 560),
    Body25.MID_HIP: (384, 560),
    Body25.R_HIP: (324, 560),
    Body25.R_KNEE: (330, 760),
    Body25.R_ANKLE: (330, 940),
    Body25.L_HIP: (444, 560),
    Body25.L_KNEE: (438, 760),
    Body25.L_ANKLE: (438, 940),
    Body25.R_EYE: (370, 140),
    Body25.L_EYE: (398, 140),
    Body25.R_EAR: (350, 150),
    Body25.L_EAR: (418, 150),
}


def _pose(points: dict[Body25, tuple[float, float]]) -> np.ndarray:
    """(25, 2) float32 keypoints; joints not listed are missing, (0, 0)."""
    pose = np.zeros((25, 2), dtype=np.float32)
    for joint, xy in points.items():
        pose[joint] = xy
    return pose


def _standard_parse() -> np.ndarray:
    parse = np.zeros((H, W), dtype=np.uint8)
    parse[30:100, 330:440] = Cihp.HAIR
    parse[100:215, 340:430] = Cihp.FACE
    parse[140:155, 350:420] = Cihp.SUNGLASSES
    parse[215:255, 355:415] = Cihp.TORSO_SKIN
    parse[250:580, 270:500] = Cihp.UPPER_CLOTHES
    parse[300:320, 270:500] = Cihp.COAT
    parse[400:420, 270:500] = Cihp.DRESS
    parse[260:780, 170:265] = Cihp.RIGHT_ARM  # image-left, the R_SHOULDER side
    parse[260:780, 503:598] = Cihp.LEFT_ARM
    parse[580:600, 280:490] = Cihp.SKIRT
    parse[600:800, 280:490] = Cihp.PANTS
    parse[800:950, 290:380] = Cihp.RIGHT_LEG
    parse[800:950, 390:480] = Cihp.LEFT_LEG
    parse[950:1000, 290:380] = Cihp.RIGHT_SHOE
    parse[950:1000, 390:480] = Cihp.LEFT_SHOE
    return parse


def _random_image(seed: int = 0) -> np.ndarray:
    """Random RGB with an odd red channel, so no original pixel is GRAY (128 is even)."""
    image = np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    image[..., 0] |= 1
    return image


@pytest.fixture
def pose() -> np.ndarray:
    return _pose(STANDARD_POSE)


@pytest.fixture
def parse() -> np.ndarray:
    return _standard_parse()


@pytest.fixture
def image() -> np.ndarray:
    return _random_image()


def _is_gray(image: np.ndarray, y: int, x: int) -> bool:
    return bool((image[y, x] == GRAY_PIXEL).all())


def _is_original(result: np.ndarray, original: np.ndarray, y: int, x: int) -> bool:
    return bool((result[y, x] == original[y, x]).all())


# ---- check_agnostic_keypoints ----------------------------------------------------------------------


def test_check_passes_a_valid_pose(pose):
    check_agnostic_keypoints(pose)
    with_confidence = np.concatenate([pose, np.ones((25, 1), np.float32)], axis=1)
    check_agnostic_keypoints(with_confidence)


@pytest.mark.parametrize(
    "joint", [Body25.NECK, Body25.R_SHOULDER, Body25.L_SHOULDER, Body25.R_HIP, Body25.L_HIP]
)
def test_check_missing_required_keypoint_names_it(pose, joint):
    pose[joint] = (0, 0)
    with pytest.raises(ItemError) as caught:
        check_agnostic_keypoints(pose)
    assert caught.value.code == MISSING_KEYPOINTS
    assert joint.name in caught.value.message, f"message should name {joint.name}: {caught.value.message!r}"


def test_check_names_every_missing_keypoint(pose):
    pose[Body25.R_SHOULDER] = (0, 0)
    pose[Body25.L_HIP] = (0, 0)
    with pytest.raises(ItemError) as caught:
        check_agnostic_keypoints(pose)
    assert "R_SHOULDER" in caught.value.message and "L_HIP" in caught.value.message, caught.value.message


def test_check_ignores_missing_arm_keypoints(pose):
    pose[[Body25.R_ELBOW, Body25.R_WRIST, Body25.L_WRIST]] = 0
    check_agnostic_keypoints(pose)


@pytest.mark.parametrize("offset", [0.0, 0.5], ids=["equal", "sub-pixel"])
def test_check_zero_hip_width(pose, offset):
    pose[Body25.L_HIP] = pose[Body25.R_HIP] + (offset, 0)
    with pytest.raises(ItemError) as caught:
        check_agnostic_keypoints(pose)
    assert caught.value.code == ZERO_HIP_WIDTH


def test_check_rejects_a_malformed_array():
    with pytest.raises(ValueError):
        check_agnostic_keypoints(np.ones((18, 2)))


# ---- parse_agnostic ------------------------------------------------------------------------------


def test_parse_agnostic_removes_upper_clothes_and_neck(parse, pose):
    out = parse_agnostic(parse, pose)
    left = {int(label): int((out == label).sum()) for label in ZEROED_LABELS}
    assert all(count == 0 for count in left.values()), f"pixels left per label: {left}"


def test_parse_agnostic_zeroes_arm_on_shoulder_elbow_segment(parse, pose):
    out = parse_agnostic(parse, pose)
    # Midpoints of the shoulder->elbow segments: R (259,260)->(230,420), L (509,260)->(538,420).
    for (x, y), label in (((244, 340), Cihp.RIGHT_ARM), ((523, 340), Cihp.LEFT_ARM)):
        assert parse[y, x] == label, "fixture: the segment midpoint should be an arm pixel"
        assert out[y, x] == 0, f"{label.name} pixel ({x}, {y}) on the shoulder->elbow segment kept {out[y, x]}"


def test_parse_agnostic_keeps_hands_far_from_the_chain(parse, pose):
    out = parse_agnostic(parse, pose)
    # Rows 620+: >= 60 px below the wrists (radius 40 there, the forearm line ends at the wrist) and
    # >= 200 px below the elbows (radius 150).
    hands = slice(620, 780)
    assert (parse[hands] == out[hands]).all(), "arm pixels far outside the drawn zones must survive"
    assert (out[hands, 170:265] == Cihp.RIGHT_ARM).all() and (out[hands, 503:598] == Cihp.LEFT_ARM).all()


def test_parse_agnostic_changes_only_clothes_neck_and_arms_to_zero(parse, pose):
    out = parse_agnostic(parse, pose)
    changed = out != parse
    touched = {int(label) for label in np.unique(parse[changed])}
    assert touched <= {int(label) for label in ZEROED_LABELS + ARM_LABELS}, f"labels changed: {touched}"
    assert (out[changed] == 0).all(), "every changed pixel should become background"


def test_parse_agnostic_zero_elbow_skips_its_segments(parse, pose):
    # (182, 420) is 48 px from the right elbow (radius 150), 61 px from the 2->4 line (half-width 50)
    # and 178 px from the shoulder (radius 150): only the elbow's own shapes cover it.
    assert parse_agnostic(parse, pose)[420, 182] == 0, "fixture: with the elbow, (182, 420) is removed"
    pose[Body25.R_ELBOW] = (0, 0)
    out = parse_agnostic(parse, pose)
    assert out[420, 182] == Cihp.RIGHT_ARM, "a (0, 0) elbow must not draw its segments or circle"


def test_parse_agnostic_zero_elbow_keeps_previous_joint(parse, pose):
    # With the right elbow missing, the chain goes shoulder (259,260) -> wrist (230,560) directly.
    # (237, 490) lies on that line but 231 px from the shoulder and 70 px from the wrist (radius 40).
    pose[Body25.R_ELBOW] = (0, 0)
    out = parse_agnostic(parse, pose)
    assert out[490, 237] == 0, "after a skipped joint the previous joint stays: line shoulder->wrist expected"


def test_parse_agnostic_dtype_shape_and_no_mutation(parse, pose):
    parse_before, pose_before = parse.copy(), pose.copy()
    out = parse_agnostic(parse, pose)
    assert out.dtype == np.uint8 and out.shape == parse.shape
    assert out is not parse
    assert np.array_equal(parse, parse_before), "input parse was mutated"
    assert np.array_equal(pose, pose_before), "input keypoints were mutated"


def test_parse_agnostic_accepts_confidence_column(parse, pose):
    with_confidence = np.concatenate([pose, np.full((25, 1), 0.9, np.float32)], axis=1)
    assert np.array_equal(parse_agnostic(parse, with_confidence), parse_agnostic(parse, pose))


# ---- image_agnostic: both recipes ----------------------------------------------------------------


def test_recipes_are_exposed():
    assert AGNOSTIC_RECIPES == ("hrviton", "vitonhd")


def test_unknown_recipe_is_rejected(image, parse, pose):
    with pytest.raises(ValueError, match="recipe"):
        image_agnostic(image, parse, pose, recipe="viton")


@pytest.mark.parametrize("recipe", AGNOSTIC_RECIPES)
def test_image_agnostic_torso_and_shoulders_are_gray(image, parse, pose, recipe):
    out = image_agnostic(image, parse, pose, recipe=recipe)
    torso = out[300:540, 300:470]  # inside the polygon shoulders (y 260) .. normalised hips (y 560)
    assert (torso == GRAY_PIXEL).all(), f"{recipe}: {(torso != GRAY_PIXEL).any(-1).sum()} torso pixels not gray"
    for joint in (Body25.R_SHOULDER, Body25.L_SHOULDER, Body25.NECK):
        x, y = STANDARD_POSE[joint]
        assert _is_gray(out, y, x), f"{recipe}: {joint.name} at ({x}, {y}) is {out[y, x]}, not gray"


@pytest.mark.parametrize("recipe", AGNOSTIC_RECIPES)
def test_image_agnostic_restores_head_and_lower_body(image, parse, pose, recipe):
    # (384, 200) is face, inside both neck shapes; (384, 610) is pants, inside the hip line.
    unlabelled = parse.copy()
    unlabelled[np.isin(parse, RESTORED_LABELS)] = Cihp.BACKGROUND
    grayed = image_agnostic(image, unlabelled, pose, recipe=recipe)
    assert _is_gray(grayed, 200, 384) and _is_gray(grayed, 610, 384), "fixture: both points lie in gray zones"

    out = image_agnostic(image, parse, pose, recipe=recipe)
    restored = np.isin(parse, RESTORED_LABELS)
    wrong = int((out[restored] != image[restored]).any(-1).sum())
    assert wrong == 0, f"{recipe}: {wrong} head/lower-body pixels differ from the original"


@pytest.mark.parametrize("recipe", AGNOSTIC_RECIPES)
def test_image_agnostic_keeps_far_background(image, parse, pose, recipe):
    out = image_agnostic(image, parse, pose, recipe=recipe)
    for rows, cols in (
        (slice(0, 40), slice(0, 100)),
        (slice(0, 40), slice(668, 768)),
        (slice(980, 1024), slice(0, 150)),
        (slice(980, 1024), slice(618, 768)),
        (slice(400, 700), slice(0, 60)),
    ):
        assert np.array_equal(out[rows, cols], image[rows, cols]), f"{recipe}: background {rows}, {cols} changed"


@pytest.mark.parametrize("recipe", AGNOSTIC_RECIPES)
def test_image_agnostic_does_not_mutate_inputs(image, parse, pose, recipe):
    before = image.copy(), parse.copy(), pose.copy()
    out = image_agnostic(image, parse, pose, recipe=recipe)
    assert out.dtype == np.uint8 and out.shape == image.shape
    for name, original, now in zip(("image", "parse", "keypoints"), before, (image, parse, pose)):
        assert np.array_equal(original, now), f"{recipe}: {name} was mutated (hips must be normalised on a copy)"


@pytest.mark.parametrize("recipe", AGNOSTIC_RECIPES)
def test_image_agnostic_validates_keypoints(image, parse, pose, recipe):
    pose[Body25.L_HIP] = (0, 0)
    with pytest.raises(ItemError) as caught:
        image_agnostic(image, parse, pose, recipe=recipe)
    assert caught.value.code == MISSING_KEYPOINTS


# ---- image_agnostic: the neck shapes, on an isolated pose ----------------------------------------
# Neck at (384, 200), shoulders at y = 450, arms missing, all background: above y = 336 only the
# neck shape can be gray (the shoulder line / shoulder shapes reach up to 6r = 114 px at r = 19).

NECK = (384, 200)


def _isolated_pose(shoulder_width: float) -> np.ndarray:
    half = shoulder_width / 2
    return _pose(
        {
            Body25.NECK: NECK,
            Body25.R_SHOULDER: (384 - half, 450),
            Body25.L_SHOULDER: (384 + half, 450),
            Body25.R_HIP: (324, 750),
            Body25.L_HIP: (444, 750),
        }
    )


# Contract §2.4: HR-VITON's shape unit r = int(shoulder_width / 16) + 1.
@pytest.mark.parametrize("shoulder_width, r", [(250, 16), (300, 19), (100, 7)])
def test_hrviton_neck_rectangle_scales_with_shoulder_width(image, shoulder_width, r):
    pose = _isolated_pose(shoulder_width)
    out = image_agnostic(image, np.zeros((H, W), np.uint8), pose, recipe="hrviton")
    x, y = NECK
    top, half_width, mid_y = y - 9 * r, 5 * r, y - 9 * r // 2
    assert _is_gray(out, top + 3, x), f"rectangle should reach 9r = {9 * r} px above keypoint 1"
    assert _is_original(out, image, top - 4, x), f"rectangle should stop 9r = {9 * r} px above keypoint 1"
    for side in (-1, 1):
        assert _is_gray(out, mid_y, x + side * (half_width - 3)), f"rectangle should be +-5r = {half_width} wide"
        assert _is_original(out, image, mid_y, x + side * (half_width + 4)), "rectangle wider than +-5r"


def test_hrviton_neck_rectangle_is_above_keypoint_only(image):
    out = image_agnostic(image, np.zeros((H, W), np.uint8), _isolated_pose(250), recipe="hrviton")
    x, y = NECK
    below = slice(y + 4, 330)
    assert np.array_equal(out[below, x], image[below, x]), "nothing below keypoint 1 may be grayed by the neck"


def test_vitonhd_neck_is_a_square_around_keypoint(image):
    # r = 20: square +-140 around (384, 200); the shoulder line (width 200 at y 450) starts at y 350.
    out = image_agnostic(image, np.zeros((H, W), np.uint8), _isolated_pose(250), recipe="vitonhd")
    x, y = NECK
    for dx, dy in ((0, -137), (0, 137), (-137, 0), (137, 0)):
        assert _is_gray(out, y + dy, x + dx), f"({x + dx}, {y + dy}) should be inside the +-140 neck square"
    for dx, dy in ((0, -144), (0, 145), (-144, 0), (144, 0)):
        assert _is_original(out, image, y + dy, x + dx), f"({x + dx}, {y + dy}) should be outside the square"


# ---- image_agnostic: the HR-VITON arm restore ----------------------------------------------------
# r = 16. (230, 632) is 72 px below the right wrist: inside the gray wrist circle (5r = 80) but outside
# the restore mask (forearm line ends at the wrist, final circle 4r = 64). (538, 632) likewise, left.

BEYOND_WRISTS = ((230, 632), (538, 632))


def test_hrviton_arm_restore_ungrays_arm_outside_arm_zone(image, parse, pose):
    unlabelled = parse.copy()
    unlabelled[np.isin(parse, ARM_LABELS)] = Cihp.BACKGROUND
    grayed = image_agnostic(image, unlabelled, pose, recipe="hrviton")
    out = image_agnostic(image, parse, pose, recipe="hrviton")
    for x, y in BEYOND_WRISTS:
        assert _is_gray(grayed, y, x), f"fixture: ({x}, {y}) lies in the gray wrist circle"
        assert _is_original(out, image, y, x), f"arm pixel ({x}, {y}) outside the arm zone should be restored"


def test_hrviton_arm_restore_keeps_skeleton_zone_gray(image, parse, pose):
    out = image_agnostic(image, parse, pose, recipe="hrviton")
    for x, y in ((230, 490), (538, 490), (240, 340)):  # on the forearms and the right upper arm
        assert _is_gray(out, y, x), f"arm pixel ({x}, {y}) on the skeleton should stay gray"


def test_vitonhd_has_no_arm_restore(image, parse, pose):
    # VITON-HD: the wrist circle has radius 5r = 100, so (230, 632) and (538, 632) stay gray.
    out = image_agnostic(image, parse, pose, recipe="vitonhd")
    for x, y in BEYOND_WRISTS:
        assert _is_gray(out, y, x), f"vitonhd must not restore arm pixel ({x}, {y})"


# ---- image_agnostic: hip normalisation -----------------------------------------------------------


@pytest.mark.parametrize("recipe", AGNOSTIC_RECIPES)
def test_image_agnostic_widens_hips_to_shoulder_width(image, pose, recipe):
    # Hips (324, 560) and (444, 560) become (259, 560) and (509, 560). (259, 650) and (509, 650) are
    # 90 px below the normalised hips, inside their ellipses (+-3r x +-6r: 48x96 at r = 16, 60x120 at
    # r = 20); around the raw hips they would be 65 px out sideways. Arms removed, all background.
    pose[[Body25.R_ELBOW, Body25.R_WRIST, Body25.L_ELBOW, Body25.L_WRIST]] = 0
    out = image_agnostic(image, np.zeros((H, W), np.uint8), pose, recipe=recipe)
    for x, y in ((259, 650), (509, 650)):
        assert _is_gray(out, y, x), f"{recipe}: ({x}, {y}) should be in the normalised hip ellipse"
