"""A stage is its module and its registry entry: `PreprocessConfig`, the CLI's options, the deployments' parameter
schemas and the run's weights all derive from the registry (tasks/stages/registry.py)."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import replace

import pytest
from pydantic import Field

from flows.cli import build_parser
from flows.cli.common import model_from_args
from tasks.records.catalog import GARMENT, PERSON
from tasks.records.config import Config, RunConfig
from tasks.stages import registry
from tasks.stages.model_cache import Weights
from tasks.stages.registry import (
    KINDS,
    STAGES,
    PreprocessConfig,
    active_stages,
    resolve_weights,
    settings_of,
    stage_fingerprints,
)

STAGE_FIELDS = {name: settings for settings in settings_of(STAGES) for name in settings.model_fields}


def test_the_configuration_is_the_runs_fields_and_every_stages_settings():
    assert set(STAGE_FIELDS), "the stages declare settings"
    assert list(PreprocessConfig.model_fields) == [*RunConfig.model_fields, *STAGE_FIELDS]
    for name, settings in STAGE_FIELDS.items():
        mine, composed = settings.model_fields[name], PreprocessConfig.model_fields[name]
        assert (composed.default, composed.description) == (mine.default, mine.description), name
        assert composed.description, f"{settings.__name__}.{name} needs a description (the CLI's help, the UI's form)"


def test_every_stage_field_is_a_cli_option_that_reaches_it():
    args = build_parser().parse_args(["preprocess", "--catalog", "c", "--out", "o"])
    assert set(PreprocessConfig.model_fields) <= set(vars(args))
    assert model_from_args(PreprocessConfig, args) == PreprocessConfig(catalog="c", out="o")
    args = build_parser().parse_args(["preprocess", "--catalog", "c", "--out", "o", "--visibility-threshold", "0.3",
                                      "--cloth-mask-model", "/m.pt", "--parser", "yolo:/p.pt", "--fit", "crop"])
    config = model_from_args(PreprocessConfig, args)
    assert (config.visibility_threshold, config.cloth_mask_model, config.parser_weights_url, config.fit) == (
        0.3, "/m.pt", "/p.pt", "crop")


@pytest.mark.parametrize("entrypoint", ["preprocess", "preprocess_part"])
def test_every_stage_field_is_in_the_deployments_parameter_schema(entrypoint):
    from prefect.utilities.callables import parameter_schema

    import flows.preprocess

    schema = parameter_schema(getattr(flows.preprocess, entrypoint).fn)
    properties = schema.definitions["PreprocessConfig"]["properties"]
    assert set(properties) == set(PreprocessConfig.model_fields)
    for name in STAGE_FIELDS:
        assert properties[name]["description"] == PreprocessConfig.model_fields[name].description


def test_the_configuration_pickles_as_prefect_passes_it_to_tasks():
    config = PreprocessConfig(catalog="c", out="o", fit="crop", parser="yolo:/p.pt")
    assert pickle.loads(pickle.dumps(config)) == config


def test_a_stage_setting_is_validated_by_its_own_module():
    with pytest.raises(ValueError, match="parser must be"):
        PreprocessConfig(catalog="c", out="o", parser="mystery")
    with pytest.raises(ValueError, match="Extra inputs"):
        PreprocessConfig(catalog="c", out="o", densepose_model="/d.pkl")


def test_weights_are_resolved_for_the_stages_that_declare_them(tmp_path):
    files = {}
    for name in ("pose.task", "parser.pt", "cloth.pt"):
        (tmp_path / name).write_bytes(name.encode())
        files[name] = str(tmp_path / name)
    assert resolve_weights(PreprocessConfig(catalog="c", out="o")) == Weights(), "the bundled defaults: no file"
    config = PreprocessConfig(catalog="c", out="o", pose_model=files["pose.task"], parser=f"yolo:{files['parser.pt']}",
                              cloth_mask_model=files["cloth.pt"])
    weights = resolve_weights(config)
    named = {stage.name for kind in KINDS for stage in active_stages(config, kind)
             if stage.weights is not None and stage.weights(config)}
    assert set(weights.files) == named == {"pose", "parse", "cloth_mask"}
    for stage, name in (("pose", "pose.task"), ("parse", "parser.pt"), ("cloth_mask", "cloth.pt")):
        assert weights.of(stage).sha256 == hashlib.sha256(name.encode()).hexdigest()
    assert weights.of("agnostic") is None


def test_a_stages_weights_hash_is_part_of_its_fingerprint_alone(tmp_path):
    (tmp_path / "cloth.pt").write_bytes(b"one")
    config = PreprocessConfig(catalog="c", out="o", cloth_mask_model=str(tmp_path / "cloth.pt"))
    first = stage_fingerprints(config, resolve_weights(config))
    (tmp_path / "cloth.pt").write_bytes(b"two")
    second = stage_fingerprints(config, resolve_weights(config))
    assert first[GARMENT]["cloth_mask"] != second[GARMENT]["cloth_mask"]
    assert {**first[GARMENT], "cloth_mask": None} == {**second[GARMENT], "cloth_mask": None}
    assert first[PERSON] == second[PERSON]


def test_fingerprint_parameters_that_leave_out_the_weights_hash_are_refused(tmp_path, monkeypatch):
    (tmp_path / "cloth.pt").write_bytes(b"weights")
    forgetful = tuple(replace(stage, params=lambda config, weights: {"model": "unet"})
                      if stage.name == "cloth_mask" else stage for stage in STAGES)
    monkeypatch.setattr(registry, "STAGES", forgetful)
    config = PreprocessConfig(catalog="c", out="o", cloth_mask_model=str(tmp_path / "cloth.pt"))
    with pytest.raises(ValueError, match="sha256"):
        stage_fingerprints(config, resolve_weights(config))


def test_two_stages_declaring_one_field_are_refused():
    class Twin(Config):
        fit: str = Field("pad", description="a second fit")

    twin = replace(next(stage for stage in STAGES if stage.name == "cloth_mask"), settings=Twin)
    with pytest.raises(ValueError, match="fit"):
        registry._check((*STAGES, twin))
