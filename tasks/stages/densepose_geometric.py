"""DensePose's 24-part index map from what the other stages found: the pose's landmarks and the parse.

No DensePose model is involved. The parse gives the body's outline (less hair away from the skull)
and what is skin, arm or garment; the landmarks give the body's frame: the torso's axis and
length, the head's size (ear to ear), the bones of the arms and legs. Each body pixel then gets the
part of the body under it, as DensePose's chart cuts the body (measured on the dataset's own
renders, `groundtruth/vitonhd/image-densepose`):

- the head is the skull (an oval from ear to ear, up to the crown) and the face, down to the middle
  of the neck; hair beyond the oval is not body;
- the torso runs from the neck to below the hip joints, down to a point at the crotch;
- an arm is what the parse calls arm, and the sleeve of a top outside the torso's frame; upper arm
  and forearm part a little above the elbow, the hand begins a little before the wrist;
- the legs are everything below the torso, left and right of the crotch, thigh and shin at the knee.

Left and right are the person's own; a person whose left shoulder is on the image's left faces
away and gets the back parts.
"""

from __future__ import annotations

import cv2
import numpy as np

from vitonhd_models.contract import Cihp
from vitonhd_models.contract import DensePosePart as Part

PARSER_ID = "geometric-v1"
WORK_SCALE = 0.25  # parts are decided at a quarter of the size, then scaled back (nearest)

# MediaPipe Pose landmark indices.
NOSE, L_EAR, R_EAR, MOUTH_L, MOUTH_R = 0, 7, 8, 9, 10
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 11, 12, 13, 14, 15, 16
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 23, 24, 25, 26, 27, 28

# The chart's cuts, in the body's own measures (T: shoulders' middle to hips' middle; W: shoulder to
# shoulder; E: ear to ear), read off the dataset's renders.
NECK_CUT = 0.6  # head ends this far from the mouth to the shoulders' line
SKULL_HALF_WIDTH_E = 0.73
SKULL_TOP_E = 1.07  # crown above the ears
MIN_EAR_DISTANCE_W = 0.4  # a head turned sideways: its ears close up, its skull does not
HIP_SIDE_DROP_T = 0.065  # torso ends this far below the hip joints at the sides...
CROTCH_DROP_T = 0.26  # ...and this far below their middle at the crotch
TORSO_INSET_W = 0.09  # the torso's frame: this far inside the shoulder joints...
HIP_OUTSET = 0.38  # ...and this share of the hips' width outside the hip joints
ARM_REACH_W = 0.45  # a garment pixel outside the frame this close to an arm bone is sleeve
ELBOW_CUT = 0.1  # upper arm ends this share of its length before the elbow
WRIST_CUT = 0.1  # forearm ends this share of its length before the wrist
UPPER_ARM_OUTSIDE_W = 0.07  # outside part of an upper arm: beyond this offset out from its bone
LOWER_ARM_INSIDE_W = 0.05  # inside part of a forearm: beyond this offset in from its bone

HEAD_LABELS = (Cihp.HAT, Cihp.SUNGLASSES, Cihp.FACE)
ARM_LABELS = (Cihp.LEFT_ARM, Cihp.RIGHT_ARM, Cihp.GLOVE)
SHOE_LABELS = (Cihp.LEFT_SHOE, Cihp.RIGHT_SHOE)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / (float(np.linalg.norm(vector)) or 1.0)


def _along(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point: how far along start->end it projects (0 at start, 1 at end) and its distance to the segment."""
    direction = end - start
    length = float(np.linalg.norm(direction)) or 1e-6
    t = ((points - start) @ direction) / length**2
    nearest = start + np.clip(t, 0.0, 1.0)[:, None] * direction
    return t, np.linalg.norm(points - nearest, axis=1)


def _off_bone(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Each point's offset from the line through start and end, at right angles to it."""
    relative = points - start
    direction = _unit(end - start)
    return relative - np.outer(relative @ direction, direction)


# Per side: (shoulder, elbow, wrist), (hand, upper arm inside, outside, forearm inside, outside).
ARMS = {
    "left": ((L_SHOULDER, L_ELBOW, L_WRIST), (Part.LEFT_HAND, Part.LEFT_UPPER_ARM_INSIDE, Part.LEFT_UPPER_ARM_OUTSIDE,
                                              Part.LEFT_LOWER_ARM_INSIDE, Part.LEFT_LOWER_ARM_OUTSIDE)),
    "right": ((R_SHOULDER, R_ELBOW, R_WRIST), (Part.RIGHT_HAND, Part.RIGHT_UPPER_ARM_INSIDE,
                                               Part.RIGHT_UPPER_ARM_OUTSIDE, Part.RIGHT_LOWER_ARM_INSIDE,
                                               Part.RIGHT_LOWER_ARM_OUTSIDE)),
}
# Per side and facing: (hip, knee, ankle), (thigh, shin, foot).
LEGS = {
    ("left", "front"): ((L_HIP, L_KNEE, L_ANKLE), (Part.LEFT_UPPER_LEG_FRONT, Part.LEFT_LOWER_LEG_FRONT, Part.LEFT_FOOT)),
    ("left", "back"): ((L_HIP, L_KNEE, L_ANKLE), (Part.LEFT_UPPER_LEG_BACK, Part.LEFT_LOWER_LEG_BACK, Part.LEFT_FOOT)),
    ("right", "front"): ((R_HIP, R_KNEE, R_ANKLE), (Part.RIGHT_UPPER_LEG_FRONT, Part.RIGHT_LOWER_LEG_FRONT,
                                                    Part.RIGHT_FOOT)),
    ("right", "back"): ((R_HIP, R_KNEE, R_ANKLE), (Part.RIGHT_UPPER_LEG_BACK, Part.RIGHT_LOWER_LEG_BACK,
                                                   Part.RIGHT_FOOT)),
}


def densepose_parts(image_rgb: np.ndarray, landmarks_px: np.ndarray, parse: np.ndarray) -> np.ndarray:
    """(H, W) uint8 DensePose part indices (0: no body) of one person.

    image_rgb: (H, W, 3) the ingested photo (only its size is used); landmarks_px: (33, >=2) MediaPipe pose
    landmarks in its pixels; parse: (H, W) CIHP labels of the same photo.
    """
    height, width = parse.shape
    if image_rgb.shape[:2] != parse.shape:
        raise ValueError(f"the photo is {image_rgb.shape[:2]} and its parse {parse.shape}: they must be one size")
    small_h, small_w = max(1, round(height * WORK_SCALE)), max(1, round(width * WORK_SCALE))
    ys = (np.arange(small_h) + 0.5) * height / small_h - 0.5
    xs = (np.arange(small_w) + 0.5) * width / small_w - 0.5
    labels = parse[np.ix_(np.clip(np.round(ys).astype(int), 0, height - 1),
                          np.clip(np.round(xs).astype(int), 0, width - 1))].ravel()
    on_body = np.flatnonzero(labels)
    points = np.stack([xs[on_body % small_w], ys[on_body // small_w]], axis=1).astype(np.float32)
    small = np.zeros(small_h * small_w, np.uint8)
    small[on_body] = _parts(points, labels[on_body], landmarks_px[:, :2].astype(np.float32))
    full = cv2.resize(small.reshape(small_h, small_w), (width, height), interpolation=cv2.INTER_NEAREST)
    return np.where(parse > 0, full, 0).astype(np.uint8)  # the outline at full size


def _parts(points: np.ndarray, labels: np.ndarray, joint: np.ndarray) -> np.ndarray:
    shoulder_mid = (joint[L_SHOULDER] + joint[R_SHOULDER]) / 2
    hip_mid = (joint[L_HIP] + joint[R_HIP]) / 2
    torso_length = float(np.linalg.norm(hip_mid - shoulder_mid)) or 1.0
    shoulder_width = float(np.linalg.norm(joint[L_SHOULDER] - joint[R_SHOULDER])) or 1.0
    down = _unit(hip_mid - shoulder_mid)
    across = np.array([-down[1], down[0]])  # towards the image's left when upright
    facing_away = float((joint[L_SHOULDER] - joint[R_SHOULDER]) @ across) > 0
    toward_right = across if not facing_away else -across  # towards the person's right side
    parts = np.zeros(len(points), np.uint8)
    body = labels > 0

    # Head: the skull's oval and the face, down to the neck's middle.
    ear_mid = (joint[L_EAR] + joint[R_EAR]) / 2
    ears = max(float(np.linalg.norm(joint[L_EAR] - joint[R_EAR])), MIN_EAR_DISTANCE_W * shoulder_width)
    mouth = (joint[MOUTH_L] + joint[MOUTH_R]) / 2
    neck_cut = float((mouth - shoulder_mid) @ -down) * (1 - NECK_CUT)  # above the shoulders' line
    height_above_shoulders = (points - shoulder_mid) @ -down
    above_neck_cut = height_above_shoulders > neck_cut
    offset = points - ear_mid
    side, up = offset @ across, offset @ -down
    in_skull = (side / (SKULL_HALF_WIDTH_E * ears)) ** 2 + (np.maximum(up, 0) / (SKULL_TOP_E * ears)) ** 2 <= 1.0
    in_neck = np.abs(side) <= SKULL_HALF_WIDTH_E * ears
    head = body & above_neck_cut & (in_skull | np.isin(labels, HEAD_LABELS) | ((labels != Cihp.HAIR) & in_neck))
    body &= ~(above_neck_cut & ~head & (labels == Cihp.HAIR))  # hair beyond the skull is no body
    parts[head] = np.where((points[head] - joint[NOSE]) @ toward_right > 0, Part.RIGHT_HEAD, Part.LEFT_HEAD)
    rest = body & ~head

    # Arms: the parse's arms, and garment outside the torso's frame close to an arm bone. The frame's
    # sides run from inside the shoulder joints down to outside the hip joints.
    hip_width = float(np.linalg.norm(joint[L_HIP] - joint[R_HIP])) or 1.0
    depth = np.clip((points - shoulder_mid) @ down / torso_length, 0.0, 1.0)
    middle = shoulder_mid + np.outer(depth, hip_mid - shoulder_mid)
    sideways = np.einsum("ij,j->i", points - middle, across)  # + towards the image's left
    outside_frame = np.zeros(len(points), bool)
    for shoulder, hip in ((L_SHOULDER, L_HIP), (R_SHOULDER, R_HIP)):
        top = float((joint[shoulder] - shoulder_mid) @ across)
        bottom = float((joint[hip] - hip_mid) @ across)
        sign = np.sign(top) or 1.0
        edge = (abs(top) - TORSO_INSET_W * shoulder_width) * (1 - depth) + (abs(bottom) + HIP_OUTSET * hip_width) * depth
        outside_frame |= (sideways * sign) > edge
    bones = {}  # per side: distance to the arm's bones, how far along the upper arm and the forearm
    for side, ((shoulder, elbow, wrist), _) in ARMS.items():
        t_upper, d_upper = _along(points, joint[shoulder], joint[elbow])
        t_lower, d_lower = _along(points, joint[elbow], joint[wrist])
        bones[side] = (np.minimum(d_upper, d_lower), t_upper, t_lower)
    nearest_left = bones["left"][0] <= bones["right"][0]
    bone_distance = np.minimum(bones["left"][0], bones["right"][0])
    garment = rest & ~np.isin(labels, ARM_LABELS) & ~np.isin(labels, SHOE_LABELS)
    sleeve = garment & outside_frame & (bone_distance < ARM_REACH_W * shoulder_width) & (height_above_shoulders < 0.1 * torso_length)
    arm = rest & (np.isin(labels, ARM_LABELS) | sleeve)
    for side, ((shoulder, elbow, wrist), (hand, upper_in, upper_out, lower_in, lower_out)) in ARMS.items():
        _, t_upper, t_lower = bones[side]
        mine = arm & (nearest_left if side == "left" else ~nearest_left)
        inward = _unit(shoulder_mid - joint[shoulder]) @ across * across  # towards the body's middle
        upper = mine & (t_upper < 1 - ELBOW_CUT)
        lower = mine & ~upper & (t_lower < 1 - WRIST_CUT)
        off_upper = _off_bone(points[upper], joint[shoulder], joint[elbow]) @ inward
        off_lower = _off_bone(points[lower], joint[elbow], joint[wrist]) @ inward
        parts[upper] = np.where(off_upper > -UPPER_ARM_OUTSIDE_W * shoulder_width, upper_in, upper_out)
        parts[lower] = np.where(off_lower > LOWER_ARM_INSIDE_W * shoulder_width, lower_in, lower_out)
        parts[mine & ~upper & ~lower] = hand
    rest &= ~arm

    # Torso above a line from below the hip joints at the sides down to the crotch; legs below it.
    below_hips = (points - hip_mid) @ down
    from_middle = np.abs((points - hip_mid) @ across)
    v_half_width = (CROTCH_DROP_T - HIP_SIDE_DROP_T) * torso_length  # the crotch's V, 45 degrees
    cut = HIP_SIDE_DROP_T * torso_length + np.maximum(v_half_width - from_middle, 0)
    legs = rest & (below_hips > cut)
    torso = rest & ~legs
    parts[torso] = Part.TORSO_BACK if facing_away else Part.TORSO_FRONT

    right_leg = (points - hip_mid) @ toward_right > 0
    facing = "back" if facing_away else "front"
    for side in ("left", "right"):
        (hip, knee, ankle), (thigh_part, shin_part, foot_part) = LEGS[side, facing]
        mine = legs & (right_leg if side == "right" else ~right_leg)
        thigh = mine & (_along(points, joint[hip], joint[knee])[0] < 1)
        foot = mine & ~thigh & ((_along(points, joint[knee], joint[ankle])[0] > 1) | np.isin(labels, SHOE_LABELS))
        parts[thigh] = thigh_part
        parts[mine & ~thigh & ~foot] = shin_part
        parts[foot] = foot_part
    return parts
