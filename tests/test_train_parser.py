"""The train-parser flow: the evaluation arithmetic, the class tables, and a real (tiny) training run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.contract import Cihp
from tasks.parse_yolo import DEFAULT_YOLO_CLASS_TO_CIHP, YOLO_CLASS_NAMES, class_table_for_names
from tasks.parser_training import IouAccumulator, best_epoch, expressible, seed8_cihp_to_class


def test_iou_is_intersection_over_union_summed_over_the_split():
    truth = np.array([[5, 5, 0, 0], [5, 5, 0, 0]], np.uint8)
    predicted = np.array([[5, 0, 0, 0], [5, 5, 5, 0]], np.uint8)
    scores = IouAccumulator([5, 13])
    scores.add(predicted, truth)
    scores.add(truth, truth)
    rows = {row["label"]: row for row in scores.rows("yolo", {5: "upper_clothes", 13: "face"})}
    # image 1: |P & T| = 3, |P | T| = 5; image 2: 4 and 4 -> (3 + 4) / (5 + 4)
    assert rows["upper_clothes"]["iou"] == pytest.approx(7 / 9)
    assert rows["face"]["iou"] is None, "a label absent from prediction and truth has no IoU"
    assert rows["mean"]["iou"] == pytest.approx(7 / 9), "the mean is over labels that occur"
    assert rows["mean"]["images"] == 2


def test_dress_and_coat_count_as_upper_body_for_the_8_classes():
    table = seed8_cihp_to_class()
    upper = YOLO_CLASS_NAMES.index("upper_body")
    assert table[int(Cihp.UPPER_CLOTHES)] == table[int(Cihp.DRESS)] == table[int(Cihp.COAT)] == upper
    assert int(Cihp.LEFT_LEG) not in table, "legs are not one of the 8 classes"


def test_labels_the_classes_cannot_express_are_background_when_scoring():
    labels = np.array([[int(Cihp.DRESS), int(Cihp.LEFT_LEG), int(Cihp.FACE)]], np.uint8)
    reduced = expressible(labels, DEFAULT_YOLO_CLASS_TO_CIHP, seed8_cihp_to_class())
    assert reduced.tolist() == [[int(Cihp.UPPER_CLOTHES), 0, int(Cihp.FACE)]]


def test_a_model_names_its_cihp_labels_by_its_class_names():
    assert class_table_for_names(dict(enumerate(YOLO_CLASS_NAMES))) == dict(DEFAULT_YOLO_CLASS_TO_CIHP)
    cihp20 = {0: "hat", 1: "hair", 2: "face"}
    assert class_table_for_names(cihp20) == {0: int(Cihp.HAT), 1: int(Cihp.HAIR), 2: int(Cihp.FACE)}
    with pytest.raises(ValueError, match="neither"):
        class_table_for_names({0: "person"})


def test_the_best_epoch_is_the_highest_box_plus_mask_fitness():
    rows = [
        {"epoch": 1, "metrics/mAP50(B)": 0.9, "metrics/mAP50-95(B)": 0.1, "metrics/mAP50(M)": 0.9, "metrics/mAP50-95(M)": 0.1},
        {"epoch": 2, "metrics/mAP50(B)": 0.5, "metrics/mAP50-95(B)": 0.4, "metrics/mAP50(M)": 0.5, "metrics/mAP50-95(M)": 0.4},
    ]
    assert best_epoch(rows)["epoch"] == 2  # 0.1 x 0.5 + 0.9 x 0.4 beats 0.1 x 0.9 + 0.9 x 0.1
    assert best_epoch([]) is None


def test_the_amp_check_never_claims_amp_off_a_gpu():
    from ultralytics.nn.tasks import SegmentationModel

    from tasks.parser_training import amp_is_safe

    assert amp_is_safe(SegmentationModel("yolov8n-seg.yaml", nc=8, verbose=False)) is False
