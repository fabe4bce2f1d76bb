"""The train-parser flow: the evaluation arithmetic, the class tables, and a real (tiny) training run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.records.config import ParserTrainConfig
from tasks.stages.parse_yolo import DEFAULT_YOLO_CLASS_TO_CIHP, YOLO_CLASS_NAMES, class_table_for_names
from tasks.tools.parser_training import IouAccumulator, best_epoch, expressible, label_tables
from vitonhd_models.contract import Cihp


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


def seed8_cihp_to_class() -> dict[int, int]:
    return label_tables({"classes": "seed8"})[1]


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

    from tasks.tools.parser_training import amp_is_safe

    assert amp_is_safe(SegmentationModel("yolov8n-seg.yaml", nc=8, verbose=False)) is False


# ---------------------------------------------------------------------------------------------
# A real training run: painted people -> parser dataset -> yolov8n-seg, 2 epochs on the CPU


@pytest.fixture(scope="module")
def parser_dataset(tmp_path_factory):
    from tasks.infra.store import Store
    from tasks.tools.parser_dataset import ParserDatasetConfig, convert_dataset
    from tests.test_parser_dataset import person_map, write_item

    root = tmp_path_factory.mktemp("parser")
    source = Store(str(root / "source"))
    for index in range(12):
        write_item(source, f"{index + 1:05d}_00", person_map(shift=index * 2 - 12))
    summary = convert_dataset(ParserDatasetConfig(out=str(root / "data"), from_parse=source.url, val_fraction=0.3))
    assert summary["items"]["val"] and summary["items"]["train"], summary["items"]
    return root


@pytest.fixture(scope="module")
def trained(parser_dataset, prefect_server):
    from flows.train_parser import train_parser

    return train_parser(ParserTrainConfig(data=str(parser_dataset / "data"), out=str(parser_dataset / "out"), model="yolov8n-seg.yaml", epochs=2, imgsz=128, batch=4, device="cpu", workers=0))


@pytest.mark.slow
def test_training_writes_weights_curves_and_a_model_card(parser_dataset, trained):
    out = parser_dataset / "out"
    for rel in ("run/weights/best.pt", "run/weights/last.pt", "run/results.csv", "curves.png", "model_card.json",
                "model_card.md"):
        assert (out / rel).is_file(), f"{rel} missing"
    card = json.loads((out / "model_card.json").read_text())
    assert card["classes"] == list(YOLO_CLASS_NAMES)
    assert {int(k): v for k, v in card["class_to_cihp"].items()} == dict(DEFAULT_YOLO_CLASS_TO_CIHP)
    assert card["data"]["fingerprint"] and card["training"]["epochs_run"] == 2
    assert card["training"]["best_epoch"] in (1, 2)


@pytest.mark.slow
def test_the_per_class_table_holds_box_and_mask_metrics_in_range(parser_dataset, trained):
    import pyarrow.parquet as pq

    rows = pq.read_table(parser_dataset / "out" / "eval" / "per_class.parquet").to_pylist()
    assert rows[-1]["class"] == "all" and rows[-1]["images"] >= 1
    for row in rows:
        for column in ("box_p", "box_r", "box_map50", "box_map50_95", "mask_p", "mask_r", "mask_map50", "mask_map50_95"):
            assert 0.0 <= row[column] <= 1.0, (row["class"], column, row[column])
    assert {row["class"] for row in rows[:-1]} <= set(YOLO_CLASS_NAMES)


@pytest.mark.slow
def test_the_pixel_iou_report_covers_both_parsers_with_values_in_range(parser_dataset, trained):
    import pyarrow.parquet as pq

    rows = pq.read_table(parser_dataset / "out" / "eval" / "pixel_iou.parquet").to_pylist()
    assert {row["parser"] for row in rows} == {"yolo", "geometric"}
    for parser in ("yolo", "geometric"):
        mean = next(row for row in rows if row["parser"] == parser and row["label"] == "mean")
        assert mean["iou"] is not None and 0.0 <= mean["iou"] <= 1.0
        assert mean["images"] >= 1
    present = [row for row in rows if row["parser"] == "yolo" and row["label"] != "mean" and row["iou"] is not None]
    assert {row["label"] for row in present} >= {"hair", "face", "upper_clothes"}, "the painted labels are scored"


@pytest.mark.slow
def test_the_parse_stage_loads_the_trained_weights_and_writes_cihp_ids(parser_dataset, trained):
    from tasks.stages.parse import YoloParser
    from tests.test_parser_dataset import HEIGHT, WIDTH

    weights = parser_dataset / "out" / "run" / "weights" / "best.pt"
    parser = YoloParser(str(weights), device="cpu", imgsz=128, conf=0.001)
    image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    labels = parser.parse(image)
    assert labels.shape == (HEIGHT, WIDTH) and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= {0, *DEFAULT_YOLO_CLASS_TO_CIHP.values()}
    assert parser.parser_id.startswith("yolo:best.pt:")


@pytest.mark.slow
def test_an_interrupted_training_resumes_from_its_last_epoch(parser_dataset, monkeypatch):
    from ultralytics.engine.trainer import BaseTrainer

    from tasks.records.config import ParserTrainConfig
    from tasks.tools.parser_training import checkpoint_epoch, read_results, train, working_dir

    config = ParserTrainConfig(data=str(parser_dataset / "data"), out=str(parser_dataset / "interrupted"),
                               model="yolov8n-seg.yaml", epochs=2, imgsz=128, batch=4, device="cpu", workers=0)
    save_model = BaseTrainer.save_model

    def save_then_die(self):
        save_model(self)
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(BaseTrainer, "save_model", save_then_die)
    with pytest.raises(RuntimeError, match="went away"):
        train(config)
    last = working_dir(config) / "run" / "weights" / "last.pt"
    assert checkpoint_epoch(last) == 0, "the first epoch's checkpoint is left behind"
    monkeypatch.setattr(BaseTrainer, "save_model", save_model)
    info = train(config)
    assert info["resumed_from_epoch"] == 1
    assert [int(row["epoch"]) for row in read_results(working_dir(config) / "run")] == [1, 2]
    assert checkpoint_epoch(last) is None, "the resumed training finished"

