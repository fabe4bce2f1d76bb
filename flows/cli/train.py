"""`vitonprep train`: run the train flow locally for one stage, with a progress bar over steps.

The options are the fields of `TrainConfig` (one source of truth for names, defaults and help), as
`--field-name`; `--storage-option KEY=VALUE` repeats.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from typing import Any, Literal

from flows.cli.common import add_output_arguments, add_storage_arguments

DESCRIPTION = (
    "Train one VITON-HD stage (seg, gmm or alias) on a dataset made by `vitonprep preprocess`. "
    "Checkpoints go to <out>/<stage>/checkpoints/ every --checkpoint-every steps and a rerun resumes from the "
    "last one; losses per step go to <out>/<stage>/metrics/*.parquet; the final weights to "
    "<out>/<stage>_final.pth, which `vitonprep tryon --checkpoints <out>` loads. Train gmm before alias: the "
    "alias stage warps the cloth with <out>/gmm_final.pth (or --gmm-checkpoints)."
)
SPECIAL = {"dataset", "stage", "out", "storage_options"}


def _option_type(annotation: Any) -> tuple[Any, tuple | None, bool]:
    """(argparse type, choices, is_flag) for a TrainConfig field annotation."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in args if arg is not type(None))
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return str, args, False
    if annotation is bool:
        return None, None, True
    return annotation, None, False


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from tasks.records.config import TrainConfig

    fields = TrainConfig.model_fields
    parser.add_argument("--dataset", required=True, help=fields["dataset"].description)
    parser.add_argument("--stage", required=True, choices=("seg", "gmm", "alias"), help=fields["stage"].description)
    parser.add_argument("--out", required=True, help=fields["out"].description)
    for name, field in fields.items():
        if name in SPECIAL:
            continue
        flag = "--" + name.replace("_", "-")
        kind, choices, is_flag = _option_type(field.annotation)
        help_text = f"{field.description or name} (default {field.default})"
        if is_flag:
            parser.add_argument(flag, action="store_true", default=field.default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, choices=choices, default=field.default, help=help_text)
    add_storage_arguments(parser, secret_block=False)
    add_output_arguments(parser)


def print_train_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return
    print(f"train {summary['stage']}: {summary['out']}")
    print(f"  steps     {summary['steps']} ({summary['steps_this_run']} this run, resumed from {summary['resumed_from']})")
    print(f"  pairs     {summary['training_pairs']} training, {summary['evaluation_pairs']} evaluation")
    for name, value in summary["evaluation"].items():
        if isinstance(value, float):
            print(f"  eval      {name} {value:.4f}")
    print(f"  weights   {summary['final']['weights']} ({summary['final']['checkpoint_id']})")
    print(f"  {summary['seconds']:.1f} s, {summary['steps_per_second']:.3f} steps/s on {summary['device']}")
    if summary.get("gmm_checkpoint") == "random-init":
        print("WARNING: the GMM was randomly initialised; train the gmm stage first", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from flows.cli.common import progress_bar, storage_options_from
    from tasks.records.config import TrainConfig

    values = {name: getattr(args, name) for name in TrainConfig.model_fields if name != "storage_options"}
    config = TrainConfig(**values, storage_options=storage_options_from(args.storage_option))
    from flows.train import train
    from tasks.engine.training import progress_logger

    with progress_bar(progress_logger, not args.no_progress and not args.json, "train", unit="step"):
        summary = train(**config.model_dump())
    print_train_summary(summary, args.json)
    return 0


def add_train_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `train` on the `vitonprep` subcommand parser."""
    parser = subparsers.add_parser("train", help="train a VITON-HD stage (seg, gmm, alias)", description=DESCRIPTION)
    add_train_arguments(parser)
    parser.set_defaults(func=cmd_train)
    return parser
