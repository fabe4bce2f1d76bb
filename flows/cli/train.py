"""`vitonprep train`: run the train flow locally for one stage, with a progress bar over steps.

The options are the fields of `TrainConfig` (one source of every name, default and help text), as
`--field-name`; `--storage-option KEY=VALUE` repeats.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flows.cli.common import add_model_arguments, add_output_arguments, model_from_args

DESCRIPTION = (
    "Train one VITON-HD stage (seg, gmm or alias) on a dataset made by `vitonprep preprocess`. "
    "Checkpoints go to <out>/<stage>/checkpoints/ every --checkpoint-every steps and a rerun resumes from the "
    "last one; losses per step go to <out>/<stage>/metrics/*.parquet; the final weights to "
    "<out>/<stage>_final.pth, which `vitonprep tryon --checkpoints <out>` loads. Train gmm before alias: the "
    "alias stage warps the cloth with <out>/gmm_final.pth (or --gmm-checkpoints)."
)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from tasks.records.config import TrainConfig

    add_model_arguments(parser, TrainConfig)
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
    from flows.cli.common import progress_bar
    from tasks.records.config import TrainConfig

    config = model_from_args(TrainConfig, args)
    from flows.train import train
    from tasks.engine.training import progress_logger

    with progress_bar(progress_logger, not args.no_progress and not args.json, "train", unit="step"):
        summary = train(config)
    print_train_summary(summary, args.json)
    return 0


def add_train_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `train` on the `vitonprep` subcommand parser."""
    parser = subparsers.add_parser("train", help="train a VITON-HD stage (seg, gmm, alias)", description=DESCRIPTION)
    add_train_arguments(parser)
    parser.set_defaults(func=cmd_train)
    return parser
