"""The CLI's options are generated from the typed configuration: what a command line means, parsed
in-process (no run), against the models it builds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flows.cli import build_parser
from flows.cli.common import model_from_args
from tasks.records.config import (
    ParserTrainConfig,
    RunPolicy,
    Selection,
    TrainConfig,
    TryOnConfig,
)
from tasks.stages.registry import PreprocessConfig
from tasks.tools.parser_dataset import ParserDatasetConfig


def parsed(*argv: str):
    return build_parser().parse_args(list(argv))


REQUIRED = {
    "preprocess": (["--catalog", "c", "--out", "o"], [PreprocessConfig(catalog="c", out="o"), Selection(), RunPolicy()]),
    "tryon": (["--dataset", "d", "--out", "o"], [TryOnConfig(dataset="d", out="o")]),
    "train": (["--dataset", "d", "--stage", "gmm", "--out", "o"], [TrainConfig(dataset="d", stage="gmm", out="o")]),
    "train-parser": (["--data", "d", "--out", "o"], [ParserTrainConfig(data="d", out="o")]),
    "parser-dataset": (["--from-parse", "p", "--out", "o"], [ParserDatasetConfig(from_parse="p", out="o")]),
}


@pytest.mark.parametrize("command", REQUIRED, ids=list(REQUIRED))
def test_a_command_with_only_its_required_options_gets_the_models_defaults(command):
    argv, expected = REQUIRED[command]
    args = parsed(command, *argv)
    assert [model_from_args(type(model), args) for model in expected] == expected


@pytest.mark.parametrize("command", REQUIRED, ids=list(REQUIRED))
def test_every_field_of_a_commands_models_is_an_option(command):
    argv, expected = REQUIRED[command]
    args = vars(parsed(command, *argv))
    for model in expected:
        missing = set(type(model).model_fields) - set(args)
        assert not missing, f"{command}: fields without an option: {sorted(missing)}"


def test_options_reach_the_fields_they_are_named_after():
    args = parsed("preprocess", "--catalog", "c", "--out", "o", "--shard-size", "8", "--fit", "crop",
                  "--workers", "0", "--trust-weights", "--storage-option", "endpoint_url=http://minio:9000",
                  "--storage-option", "client_kwargs={\"region_name\": \"eu\"}", "--prefix", "garments/",
                  "--since", "2026-11-01", "--full-refresh", "--max-failed-fraction", "0.5",
                  "--tryon-persons", "a,b", "--tryon-persons", "c")
    config, selection, policy = (model_from_args(model, args) for model in (PreprocessConfig, Selection, RunPolicy))
    assert (config.shard_size, config.fit, config.workers, config.trust_weights) == (8, "crop", 0, True)
    assert config.storage_options == {"endpoint_url": "http://minio:9000", "client_kwargs": {"region_name": "eu"}}
    assert selection == Selection(prefix="garments/", since=datetime(2026, 11, 1, tzinfo=UTC), full_refresh=True)
    assert (policy.max_failed_fraction, policy.tryon_persons) == (0.5, ["a", "b", "c"])


def test_a_flag_that_defaults_to_on_has_its_no_form():
    args = parsed("train-parser", "--data", "d", "--out", "o", "--no-compare-geometric")
    assert model_from_args(ParserTrainConfig, args).compare_geometric is False


@pytest.mark.parametrize("argv, message", [
    (["preprocess", "--catalog", "c", "--out", "o", "--fit", "stretch"], "invalid choice"),
    (["preprocess", "--catalog", "c"], "required: --out"),
    (["train", "--dataset", "d", "--out", "o", "--stage", "gmm", "--steps", "many"], "invalid int value"),
])
def test_a_malformed_option_is_refused_by_the_parser_with_its_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parsed(*argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage:" in err and message in err, err


def test_a_value_the_model_refuses_is_reported_with_the_usage_and_exit_2(tmp_path, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["preprocess", "--catalog", str(tmp_path), "--out", str(tmp_path / "o"), "--shard-size", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage: vitonprep preprocess" in err and "shard_size" in err, err


def test_a_credential_given_as_a_storage_option_is_refused(tmp_path, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["tryon", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"), "--storage-option", "secret=hunter2xyz"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "must not carry credentials" in err and "hunter2xyz" not in err, err
