"""`vitonprep preprocess` and `vitonprep demo`: the preprocess flow run locally (or on a configured server)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flows.cli.common import add_model_arguments, add_output_arguments, model_from_args, stdout_for_json
from flows.local import run_flow


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    from tasks.records.config import RunPolicy, Selection
    from tasks.stages.registry import PreprocessConfig

    add_model_arguments(parser, PreprocessConfig, "what to make")
    add_model_arguments(parser, Selection, "which items (a backfill)")
    add_model_arguments(parser, RunPolicy, "run policy (exit 1 and a Failed run above max-failed-fraction)")
    add_output_arguments(parser)


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    print(f"run {summary['run_id']}: {summary['out']}/{summary['split']}")
    for kind in ("persons", "garments"):
        counts = summary[kind]
        print(
            f"  {kind:9s} {summary['listed'][kind]:6d} listed {counts['total']:6d} processed "
            f"{counts['error']:5d} failed {summary['dataset'][kind]:6d} in the dataset"
        )
    print(f"  pairs     {summary['pairs']:6d} in {summary['split']}_pairs.txt")
    for stage, stats in summary["stages"].items():
        print(f"  {stage:10s} {stats['mean_ms']:8.1f} ms/image over {stats['items']} images")
    print(f"  {summary['seconds']:.1f} s, {summary['images_per_second']:.2f} images/s")
    if summary.get("ui_url"):
        print(f"  in the UI: {summary['ui_url']}")
    for failure in summary["failed"]:
        print(f"  failed {failure['kind']} {failure['key']} at {failure['stage']}: "
              f"{failure['error_code']}: {failure['error_message']}")


def cmd_preprocess(args: argparse.Namespace) -> int:
    from flows.preprocess import RunFailed
    from tasks.records.config import RunPolicy, Selection
    from tasks.stages.registry import PreprocessConfig

    config, selection, policy = (model_from_args(model, args) for model in (PreprocessConfig, Selection, RunPolicy))
    try:
        with stdout_for_json(args.json):
            summary = run_flow(config, show_progress=not args.no_progress and not args.json, selection=selection,
                               policy=policy)
    except RunFailed as failure:
        print_summary(failure.summary, args.json)
        print(f"error: {failure}", file=sys.stderr)
        return 1
    print_summary(summary, args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    with stdout_for_json(args.json):
        result = run_demo(args.out, workers=args.workers, show_progress=not args.no_progress and not args.json)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print_summary(result["summary"], as_json=False)
        print(f"contact sheet: {result['contact_sheet']}")
    return 0


def add_preprocess_commands(commands: argparse._SubParsersAction) -> None:
    pre = commands.add_parser("preprocess", help="turn a catalog into a VITON-HD dataset", description=(
        "Run the preprocess flow locally: pose, parsing, agnostic images and DensePose renders for every person "
        "photo, cloth masks for every garment."
    ))
    add_preprocess_arguments(pre)
    pre.set_defaults(func=cmd_preprocess)

    demo = commands.add_parser("demo", help="run the flow end to end on bundled photos", description=(
        "Assemble a small catalog from photos that installed packages ship plus rendered garments, "
        "preprocess it on the embedded defaults and write a contact sheet."
    ))
    demo.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    demo.add_argument("--workers", type=int, default=None,
                      help="worker processes for the CPU stages (default: one per core)")
    add_output_arguments(demo, "the result")
    demo.set_defaults(func=cmd_demo)
