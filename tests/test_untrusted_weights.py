"""No code runs from a weights file, and nothing reaches the network, unless the user says so.

The crafted checkpoints here are real Ultralytics checkpoints with one extra object whose unpickling
calls `exec`: loading them the way Ultralytics does by default would write a marker file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.stages.registry import PreprocessConfig


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def crafted(weights: Path, folder: Path, name: str = "crafted.pt") -> tuple[Path, Path]:
    """A copy of `weights` that runs code when unpickled; (its path, the marker file that code writes)."""
    import torch

    marker = folder / f"{name}.ran"
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    checkpoint["git"] = Payload(marker)
    path = folder / name
    torch.save(checkpoint, path)
    return path, marker


def test_the_parser_refuses_weights_that_would_run_code(yolo_weights, tmp_path):
    from tasks.stages.parse_yolo import UntrustedWeightsError, YoloParser

    path, marker = crafted(yolo_weights, tmp_path)
    with pytest.raises(UntrustedWeightsError, match="--trust-weights"):
        YoloParser(str(path))
    assert not marker.exists(), "the checkpoint's code ran"


def test_a_user_who_trusts_the_file_can_load_it(yolo_weights, tmp_path):
    from tasks.stages.parse_yolo import YoloParser

    path, marker = crafted(yolo_weights, tmp_path)
    YoloParser(str(path), trust=True)
    assert marker.exists(), "trusting a file loads it as Ultralytics does"


def test_ordinary_trained_weights_load_without_trust(yolo_weights):
    from tasks.stages.parse_yolo import YoloParser

    assert YoloParser(str(yolo_weights)).class_to_cihp


@pytest.mark.slow
def test_a_preprocess_run_with_such_weights_stops_before_processing_anything(yolo_weights, samples_dir, tmp_path,
                                                                             prefect_server):
    from flows.preprocess import preprocess
    from tasks.infra.store import Store

    path, marker = crafted(yolo_weights, tmp_path)
    catalog = Store(str(tmp_path / "catalog"))
    catalog.write_bytes("persons/00034_00.jpg", (samples_dir / "image" / "00034_00.jpg").read_bytes())
    state = preprocess(PreprocessConfig(catalog=catalog.url, out=str(tmp_path / "dataset"), parser=f"yolo:{path}"), return_state=True)
    assert state.is_failed() and "--trust-weights" in state.message, state.message
    assert not marker.exists() and not (tmp_path / "dataset" / "test").exists()


def test_train_parser_refuses_to_fine_tune_weights_that_would_run_code(yolo_weights, tmp_path):
    from tasks.records.config import ParserTrainConfig
    from tasks.stages.parse_yolo import UntrustedWeightsError
    from tasks.tools.parser_training import train

    path, marker = crafted(yolo_weights, tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: hair}\n")
    config = ParserTrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "out"), model=str(path), epochs=1,
                               imgsz=64, device="cpu", workers=0)
    with pytest.raises(UntrustedWeightsError):
        train(config)
    assert not marker.exists()


def test_train_parser_refuses_to_resume_from_a_last_pt_that_would_run_code(yolo_weights, tmp_path):
    from tasks.stages.parse_yolo import UntrustedWeightsError
    from tasks.tools.parser_training import checkpoint_epoch

    path, marker = crafted(yolo_weights, tmp_path, "last.pt")
    with pytest.raises(UntrustedWeightsError):
        checkpoint_epoch(path)
    assert not marker.exists()


def test_a_bare_official_name_is_refused_instead_of_downloaded():
    from tasks.records.config import ParserTrainConfig
    from tasks.tools.parser_training import resolve_model

    with pytest.raises(ValueError, match="bare name, which Ultralytics would download"):
        resolve_model(ParserTrainConfig(data="d", out="o", model="yolov8n-seg.pt"))


@pytest.mark.slow
def test_train_parser_looks_up_no_host_and_connects_nowhere(tmp_path):
    """The production training path, with no test stub of Ultralytics' font check: every DNS lookup and
    connection attempt is recorded, and there must be none."""
    from tasks.infra.store import Store
    from tasks.records.config import ParserTrainConfig
    from tasks.tools.parser_dataset import ParserDatasetConfig, convert_dataset
    from tasks.tools.parser_training import train
    from tests.test_parser_dataset import person_map, write_item
    from tests.yolo_weights import network_refused

    source = Store(str(tmp_path / "source"))
    for index in range(6):
        write_item(source, f"{index + 1:05d}_00", person_map(shift=index * 2 - 6))
    convert_dataset(ParserDatasetConfig(out=str(tmp_path / "data"), from_parse=source.url, val_fraction=0.34))
    config = ParserTrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "out"), model="yolov8n-seg.yaml",
                               epochs=1, imgsz=64, batch=2, device="cpu", workers=0)
    with network_refused() as attempts:
        info = train(config)
    assert info["trained"]
    outside = [attempt for attempt in attempts if "127.0.0.1" not in attempt]  # the tests' own Prefect server
    assert outside == [], f"training reached for the network: {outside}"
