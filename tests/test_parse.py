"""Parsing: the parse PNG format, instance compositing, the YOLO-seg backend and the geometric parser."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tasks.stages.parse import (
    DEFAULT_YOLO_CLASS_TO_CIHP,
    YOLO_CLASS_NAMES,
    GeometricParser,
    YoloParser,
    decode_parse_png,
    encode_parse_png,
)
from tasks.stages.parse_yolo import composite_instances_on_device
from tasks.stages.registry import PreprocessConfig
from tests.yolo_weights import TINY_IMGSZ as _TINY
from vitonhd_models.contract import CIHP_NUM_LABELS, Body25, Cihp, cihp_palette_flat

# ---------------------------------------------------------------------------------------------
# The parse PNG
# ---------------------------------------------------------------------------------------------


def _all_labels_map() -> np.ndarray:
    labels = np.zeros((8, 10), dtype=np.uint8)
    labels.flat[:CIHP_NUM_LABELS] = np.arange(CIHP_NUM_LABELS)
    return labels


def test_encode_parse_png_writes_p_mode_with_the_cihp_palette():
    with Image.open(io.BytesIO(encode_parse_png(_all_labels_map()))) as image:
        assert image.format == "PNG"
        assert image.mode == "P", f"parse PNGs must be P mode (contract §1.3), got {image.mode}"
        palette = image.getpalette()
    assert palette[: 3 * CIHP_NUM_LABELS] == cihp_palette_flat()[: 3 * CIHP_NUM_LABELS], "palette is not CIHP's"


def test_parse_png_round_trip_preserves_every_label():
    labels = _all_labels_map()
    decoded = decode_parse_png(encode_parse_png(labels))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, labels, err_msg="label ids changed through encode/decode")


def test_encode_parse_png_rejects_values_above_19():
    labels = np.zeros((4, 4), dtype=np.uint8)
    labels[1, 1] = 20
    with pytest.raises(ValueError, match="outside 0..19"):
        encode_parse_png(labels)


def test_decode_parse_png_rejects_an_rgb_visualisation():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8), mode="RGB").save(buffer, format="PNG")
    with pytest.raises(ValueError, match="mode 'RGB'"):
        decode_parse_png(buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# Compositing instances
# ---------------------------------------------------------------------------------------------


def _two_overlapping_squares() -> np.ndarray:
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 0:6, 0:6] = True
    masks[1, 4:10, 4:10] = True  # overlap: rows 4-5, cols 4-5
    return masks


def _composite(masks, class_ids, confidences, class_to_cihp) -> np.ndarray:
    """`composite_instances_on_device` on CPU tensors made from arrays and lists."""
    return composite_instances_on_device(
        torch.from_numpy(np.asarray(masks, np.float32)), torch.tensor(class_ids, dtype=torch.float32),
        torch.tensor(confidences, dtype=torch.float32), class_to_cihp,
    )


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["confident-last", "confident-first"])
def test_composite_most_confident_instance_wins_the_overlap(order):
    masks = _two_overlapping_squares()
    class_ids = np.array([0, 1])
    confidences = np.array([0.4, 0.9])  # instance 1 (class 1 -> 13) is the confident one
    index = list(order)
    out = _composite(masks[index], class_ids[index], confidences[index], {0: 2, 1: 13})
    assert out[5, 5] == 13, f"overlap got {out[5, 5]}, expected the more confident instance's 13"
    assert out[0, 0] == 2 and out[9, 9] == 13 and out[0, 9] == 0


def test_composite_maps_classes_through_the_table():
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 1:3, 1:3] = True
    out = _composite(masks, [3], [0.8], DEFAULT_YOLO_CLASS_TO_CIHP)
    assert set(np.unique(out)) == {0, int(Cihp.UPPER_CLOTHES)}, "class 3 (upper_body) must become CIHP 5"


def test_composite_ignores_a_class_missing_from_the_table():
    masks = _two_overlapping_squares()
    out = _composite(masks, [7, 3], [0.99, 0.5], {3: 5})
    assert out[0, 0] == 0, "the unmapped class 7 was painted"
    assert out[5, 5] == 5, "an unmapped instance must not hide a mapped one"


def test_the_default_table_covers_the_eight_parser_classes():
    assert len(YOLO_CLASS_NAMES) == 8
    assert sorted(DEFAULT_YOLO_CLASS_TO_CIHP) == list(range(8))
    assert dict(zip(YOLO_CLASS_NAMES, (DEFAULT_YOLO_CLASS_TO_CIHP[i] for i in range(8)))) == {
        "hair": 2, "face": 13, "neck": 10, "upper_body": 5, "lower_body": 9,
        "left_hand": 14, "right_hand": 15, "skirt": 12,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Choosing a backend
# ---------------------------------------------------------------------------------------------


def test_the_geometric_parser_is_named_in_the_manifest_as_geometric_v3():
    assert GeometricParser.parser_id == "geometric-v3"


@pytest.mark.parametrize("spec", ["yolo:", "schp", ""])
def test_the_configuration_refuses_a_parser_spec_it_cannot_build(spec):
    with pytest.raises(ValueError, match="parser must be 'geometric' or 'yolo:<weights URL>'"):
        PreprocessConfig(catalog="c", out="o", parser=spec)


# ---------------------------------------------------------------------------------------------
# YOLO-seg backend with real Ultralytics weights, trained here, offline
# ---------------------------------------------------------------------------------------------

def test_yolo_parser_returns_full_resolution_cihp_labels(yolo_weights, no_network):
    image = np.full((150, 200, 3), 200, dtype=np.uint8)  # not the training size, not a multiple of 32
    image[40:90, 50:150] = (40, 40, 200)
    # conf=1e-6: a 1-epoch model is unsure of everything; this makes it emit instances to composite.
    parser = YoloParser(str(yolo_weights), conf=1e-6, imgsz=_TINY, device="cpu")
    labels = parser.parse(image)
    assert labels.shape == (150, 200) and labels.dtype == np.uint8, f"got {labels.shape} {labels.dtype}"
    allowed = {0} | set(DEFAULT_YOLO_CLASS_TO_CIHP.values())
    assert set(np.unique(labels).tolist()) <= allowed, f"labels {np.unique(labels)} outside {allowed}"
    assert labels.any(), "no instance was composited at conf=1e-6"
    assert no_network == [], f"predict tried the network: {no_network}"


def test_yolo_parser_applies_a_custom_class_table(yolo_weights):
    image = np.full((100, 120, 3), 200, dtype=np.uint8)
    every_class_to_19 = {c: int(Cihp.RIGHT_SHOE) for c in range(8)}
    parser = YoloParser(str(yolo_weights), class_to_cihp=every_class_to_19, conf=1e-6, imgsz=_TINY)
    found = set(np.unique(parser.parse(image)).tolist())
    assert 19 in found and found <= {0, 19}, f"labels {found} with every class mapped to 19"


class _FakeBoxes:
    def __init__(self, cls, conf):
        self.cls, self.conf = torch.tensor(cls, dtype=torch.float32), torch.tensor(conf, dtype=torch.float32)

    def __len__(self):
        return len(self.cls)


class _FakeYolo:
    """Stands in for ultralytics.YOLO: records the predict call, returns two overlapping instances."""

    def __init__(self):
        self.calls = []

    def predict(self, source, **kwargs):
        self.calls.append((source, kwargs))
        results = []
        for image in source:
            height, width = image.shape[:2]
            masks = torch.zeros((2, height, width))
            masks[0, : height // 2] = 1  # class 3 (upper_body), confident
            masks[1, height // 4 :] = 1  # class 4 (lower_body), overlapping the first
            results.append(SimpleNamespace(masks=SimpleNamespace(data=masks), boxes=_FakeBoxes([3, 4], [0.9, 0.6])))
        return results


def test_yolo_parser_makes_one_batched_bgr_full_resolution_predict_call(yolo_weights):
    parser = YoloParser(str(yolo_weights), imgsz=_TINY)
    parser.model = fake = _FakeYolo()
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red in RGB
    maps = parser.parse_batch([image, image])
    assert len(fake.calls) == 1, f"{len(fake.calls)} predict calls for one batch"
    source, kwargs = fake.calls[0]
    assert isinstance(source, list) and len(source) == 2
    assert source[0][0, 0].tolist() == [0, 0, 255], "Ultralytics takes BGR arrays; the image was not converted"
    assert kwargs["retina_masks"] is True and kwargs["verbose"] is False
    expected = np.full((40, 30), int(Cihp.PANTS), dtype=np.uint8)
    expected[:20] = Cihp.UPPER_CLOTHES  # the more confident upper_body wins the overlap
    for labels in maps:
        np.testing.assert_array_equal(labels, expected)


def test_yolo_parser_batch_keeps_each_image_size(yolo_weights):
    parser = YoloParser(str(yolo_weights), conf=0.25, imgsz=_TINY)
    images = [np.zeros((64, 80, 3), dtype=np.uint8), np.full((120, 90, 3), 255, dtype=np.uint8)]
    shapes = [labels.shape for labels in parser.parse_batch(images)]
    assert shapes == [(64, 80), (120, 90)]
    assert parser.parse_batch([]) == []


def test_yolo_parser_id_names_the_file_and_its_hash(yolo_weights):
    parser = YoloParser(str(yolo_weights), imgsz=_TINY)
    digest = hashlib.sha256(yolo_weights.read_bytes()).hexdigest()[:12]
    assert parser.parser_id == f"yolo:{yolo_weights.name}:{digest}"


def test_yolo_parser_refuses_a_missing_file_instead_of_downloading(tmp_path):
    with pytest.raises(FileNotFoundError):
        YoloParser(str(tmp_path / "yolov8n-seg.pt"))  # an official name Ultralytics would download


# ---------------------------------------------------------------------------------------------
# Geometric parser on the real sample photos
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def geometric():
    with GeometricParser() as parser:
        yield parser


@pytest.fixture(scope="module")
def sample_parses(samples_dir, geometric, no_network):
    """{stem: (image, pose, labels)} for the 4 sample photos, poses from tasks.stages.pose.PoseEstimator
    (MediaPipe's bundled models: nothing may be fetched)."""
    from tasks.stages.pose import PoseEstimator

    out = {}
    with PoseEstimator() as estimator:
        for path in sorted((samples_dir / "image").glob("*.jpg")):
            image = np.array(Image.open(path).convert("RGB"))
            pose = estimator.estimate(image)
            out[path.stem] = (image, pose, geometric.parse(image, pose))
    assert len(out) == 4, f"expected 4 sample photos, found {sorted(out)}"
    assert no_network == [], f"MediaPipe tried the network: {no_network}"
    return out


def _centroid(labels: np.ndarray, label: int) -> np.ndarray:
    ys, xs = np.nonzero(labels == label)
    return np.array([xs.mean(), ys.mean()])


def test_geometric_parse_is_a_full_size_cihp_map(sample_parses):
    for stem, (image, _, labels) in sample_parses.items():
        assert labels.shape == image.shape[:2] and labels.dtype == np.uint8, stem
        assert labels.max() < CIHP_NUM_LABELS, f"{stem}: label {labels.max()}"
        decode_parse_png(encode_parse_png(labels))  # writable as image-parse-v3


def test_geometric_face_is_present_and_above_the_upper_clothes(sample_parses):
    for stem, (_, _, labels) in sample_parses.items():
        assert (labels == Cihp.FACE).sum() > 5000, f"{stem}: face has {(labels == Cihp.FACE).sum()} px"
        face_y, upper_y = _centroid(labels, Cihp.FACE)[1], _centroid(labels, Cihp.UPPER_CLOTHES)[1]
        assert face_y < upper_y, f"{stem}: face centroid y {face_y:.0f} is not above upper clothes {upper_y:.0f}"


def test_geometric_hair_is_present(sample_parses):
    for stem, (_, _, labels) in sample_parses.items():
        # 00121's bleached buzz cut reads as skin under the face's colours: only the head's rim is hair.
        least = 100 if stem == "00121_00" else 5000
        assert (labels == Cihp.HAIR).sum() > least, f"{stem}: hair has {(labels == Cihp.HAIR).sum()} px"


def test_geometric_arms_are_present_on_the_right_sides(sample_parses):
    for stem, (_, _, labels) in sample_parses.items():
        for arm in (Cihp.LEFT_ARM, Cihp.RIGHT_ARM):
            assert (labels == arm).sum() > 2000, f"{stem}: {arm.name} has {(labels == arm).sum()} px"
        # Front-facing: the person's left arm (14) is on the image's right.
        left_x, right_x = _centroid(labels, Cihp.LEFT_ARM)[0], _centroid(labels, Cihp.RIGHT_ARM)[0]
        assert left_x > right_x, f"{stem}: left arm x {left_x:.0f} <= right arm x {right_x:.0f}"


def test_geometric_upper_clothes_cover_the_middle_of_the_torso(sample_parses):
    for stem, (_, pose, labels) in sample_parses.items():
        kp = pose.keypoints_body25
        neck, mid_hip = kp[Body25.NECK, :2], kp[Body25.MID_HIP, :2]
        assert kp[Body25.NECK, 2] > 0 and kp[Body25.MID_HIP, 2] > 0, f"{stem}: pose lacks neck or mid-hip"
        x, y = np.round((neck + mid_hip) / 2).astype(int)
        assert labels[y, x] == Cihp.UPPER_CLOTHES, f"{stem}: torso middle ({x},{y}) is {labels[y, x]}, not 5"


def test_geometric_pants_are_below_the_upper_clothes(sample_parses):
    for stem, (_, _, labels) in sample_parses.items():
        assert (labels == Cihp.PANTS).sum() > 10000, f"{stem}: pants have {(labels == Cihp.PANTS).sum()} px"
        assert _centroid(labels, Cihp.PANTS)[1] > _centroid(labels, Cihp.UPPER_CLOTHES)[1], stem


def test_geometric_labels_no_skirt_on_trousers_jeans_or_shorts(sample_parses):
    for stem, (_, _, labels) in sample_parses.items():  # trousers, jeans cut at the thigh, denim shorts
        assert not (labels == Cihp.SKIRT).any(), f"{stem}: {(labels == Cihp.SKIRT).sum()} px of skirt"


def _denim_mini_skirt(image: np.ndarray) -> np.ndarray:
    """00121_00's denim shorts made a mini skirt: the notch between the legs filled with the denim beside it."""
    skirt = image.copy()
    patch = image[850:935, 300:350]
    skirt[850:935, 350:400] = patch
    skirt[850:935, 400:420] = patch[:, :20]
    return skirt


@pytest.mark.parametrize("mirrored", [False, True], ids=["as-shot", "mirrored"])
def test_geometric_labels_a_skirt_as_skirt(sample_parses, geometric, mirrored):
    from tasks.stages.pose import PoseEstimator

    image = _denim_mini_skirt(sample_parses["00121_00"][0])
    if mirrored:
        image = np.ascontiguousarray(image[:, ::-1])
    with PoseEstimator() as estimator:
        labels = geometric.parse(image, estimator.estimate(image))
    assert (labels == Cihp.SKIRT).sum() > 30000, f"{(labels == Cihp.SKIRT).sum()} px of skirt"
    assert not (labels == Cihp.PANTS).any(), "part of the skirt is labelled pants"


def test_geometric_labels_nothing_outside_the_silhouette(sample_parses):
    for stem, (_, pose, labels) in sample_parses.items():
        silhouette = (pose.segmentation > 0.5).astype(np.uint8)
        dilated = cv2.dilate(silhouette, np.ones((5, 5), np.uint8)).astype(bool)
        outside = int(((labels > 0) & ~dilated).sum())
        assert outside == 0, f"{stem}: {outside} labelled pixels outside the person silhouette"


def test_geometric_parse_without_segmentation_falls_back_to_the_skeleton(sample_parses, geometric):
    image, pose, _ = sample_parses["00035_00"]
    labels = geometric.parse(image, dataclasses.replace(pose, segmentation=None))
    for label in (Cihp.FACE, Cihp.UPPER_CLOTHES):
        assert (labels == label).sum() > 2000, f"no {label.name} without a segmentation"
    assert labels[0, 0] == 0 and labels[:, :40].sum() == 0, "the fallback silhouette reached the image border"


def test_an_arm_whose_joints_are_missing_is_labelled_only_where_its_skin_shows_on_its_side(sample_parses, geometric):
    image, pose, _ = sample_parses["00034_00"]
    keypoints = pose.keypoints_body25.copy()
    keypoints[[Body25.L_ELBOW, Body25.L_WRIST]] = 0.0
    landmarks = pose.landmarks_px.copy()
    landmarks[[13, 15, 17, 19, 21], 3] = 0.0  # MediaPipe's left elbow, wrist and hand: not visible
    labels = geometric.parse(image, dataclasses.replace(pose, keypoints_body25=keypoints, landmarks_px=landmarks))
    neck_x = pose.keypoints_body25[Body25.NECK, 0]
    left_arm_xs = np.nonzero(labels == Cihp.LEFT_ARM)[1]
    assert (left_arm_xs > neck_x).all(), "the left arm's label reached the person's right side"
    assert (labels == Cihp.RIGHT_ARM).sum() > 2000, "the right arm went missing too"


def test_geometric_parse_of_an_empty_pose_is_background(geometric):
    image = np.full((1024, 768, 3), 180, dtype=np.uint8)
    from tasks.stages.pose import PoseResult

    pose = PoseResult(
        keypoints_body25=np.zeros((25, 3), np.float32),
        landmarks_px=np.zeros((33, 4), np.float32),
        segmentation=np.zeros((1024, 768), np.float32),
        persons_detected=0,
    )
    labels = geometric.parse(image, pose)
    assert labels.shape == (1024, 768) and not labels.any()
