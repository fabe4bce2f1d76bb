"""`vitonprep tryon`: the tryon flow run locally."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flows.cli.common import add_model_arguments, add_output_arguments, model_from_args, progress_bar


def add_tryon_arguments(parser: argparse.ArgumentParser) -> None:
    from flows.tryon import SHARDS_IN_FLIGHT
    from tasks.records.config import TryOnConfig

    add_model_arguments(parser, TryOnConfig)
    parser.add_argument("--workers", type=int, default=SHARDS_IN_FLIGHT,
                        help=f"task runs in flight at once (default {SHARDS_IN_FLIGHT})")
    add_output_arguments(parser)


def print_tryon_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    counts = summary["pairs"]
    print(f"run {summary['run_id']}: {summary['out']} ({summary['split']}, {summary['pairs_source']})")
    print(f"  pairs     {counts['total']:6d} total {counts['ok']:6d} ok {counts['error']:5d} failed "
          f"{counts['skipped']:6d} skipped (already rendered)")
    print(f"  weights   {summary['checkpoint']}")
    print(f"  {summary['device']} {summary['precision']}, "
          f"{summary['architecture']['load_width']}x{summary['architecture']['load_height']}")
    timings = summary["timings"]
    print(f"  per pair  load {timings['load_ms_per_pair']:.0f} ms, infer {timings['infer_ms_per_pair']:.0f} ms, "
          f"write {timings['write_ms_per_pair']:.0f} ms")
    print(f"  {summary['seconds']:.1f} s, {summary['pairs_per_s']:.2f} pairs/s")
    if summary["contact_sheet"]:
        print(f"  contact sheet: {summary['contact_sheet']}")
    for failure in summary["failed"]:
        print(f"  failed {failure['person']} {failure['garment']}: {failure['error_code']}: {failure['error_message']}")
    if summary["warning"]:
        print(f"WARNING: {summary['warning']}", file=sys.stderr)


def cmd_tryon(args: argparse.Namespace) -> int:
    from prefect.task_runners import ThreadPoolTaskRunner

    from tasks.records.config import TryOnConfig

    config = model_from_args(TryOnConfig, args)
    from flows.report import progress_logger
    from flows.tryon import tryon

    with progress_bar(progress_logger, not args.no_progress and not args.json, "tryon"):
        bounded = tryon.with_options(task_runner=ThreadPoolTaskRunner(max_workers=args.workers))
        summary = bounded(config)
    print_tryon_summary(summary, args.json)
    return 0


def add_tryon_command(commands: argparse._SubParsersAction) -> None:
    tryon = commands.add_parser("tryon", help="render try-on images with VITON-HD's networks", description=(
        "Run the tryon flow locally: VITON-HD's seg, GMM and ALIAS networks over every pair (a pairs file, or "
        "persons x garments), writing results/<person>_<garment>.jpg, a Parquet manifest and a contact sheet. "
        "Pairs already rendered with the same checkpoints are skipped. Without trained checkpoints the "
        "networks are randomly initialised and the results are not meaningful (the run says so)."
    ))
    add_tryon_arguments(tryon)
    tryon.set_defaults(func=cmd_tryon)
