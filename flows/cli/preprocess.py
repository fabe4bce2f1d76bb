"""`vitonprep preprocess` and `vitonprep demo`: the preprocess flow run locally (or on a configured server)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC
from typing import Any

from flows.cli.common import (
    add_output_arguments,
    add_storage_arguments,
    progress_bar,
    stdout_for_json,
    storage_options_from,
)
from tasks.records.config import DEFAULT_MAX_SOURCE_BYTES, DEFAULT_PARSE_BATCH_SIZE


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", required=True, help="catalog root URL (persons/ + garments/, or image/ + cloth/)")
    parser.add_argument("--out", required=True, help="dataset root URL")
    parser.add_argument("--parser", default="geometric", help="'geometric' (default) or 'yolo:<weights URL>'")
    parser.add_argument("--shard-size", type=int, default=64, help="images per task run (default 64)")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="split to write (default test)")
    parser.add_argument("--fit", choices=("pad", "crop"), default="pad", help="how other aspect ratios reach 768x1024")
    parser.add_argument(
        "--agnostic-recipe", choices=("hrviton", "vitonhd"), default="hrviton", help="clothing-agnostic image recipe"
    )
    parser.add_argument("--pose-model", default=None, help="URL of a MediaPipe Tasks .task pose model")
    parser.add_argument("--cloth-mask-model", default=None, help="URL of a ClothUNet checkpoint")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="worker processes for the CPU stages (default: one per core; 0: in the flow's own process)",
    )
    parser.add_argument("--parse-batch-size", type=int, default=DEFAULT_PARSE_BATCH_SIZE,
                        help=f"images per YOLO parser call (default {DEFAULT_PARSE_BATCH_SIZE})")
    parser.add_argument("--max-source-bytes", type=int, default=DEFAULT_MAX_SOURCE_BYTES,
                        help=f"larger source files are rejected without being read (default {DEFAULT_MAX_SOURCE_BYTES})")
    parser.add_argument("--max-torso-tilt", type=float, default=45.0, metavar="DEGREES",
                        help="refuse persons whose torso leans further from upright (default 45: not_upright)")
    parser.add_argument("--max-other-person-scale", type=float, default=0.5, metavar="RATIO",
                        help="refuse photos with another person at least this size of the chosen one "
                        "(default 0.5: several_persons)")
    parser.add_argument("--trust-weights", action="store_true",
                        help="load the YOLO parser's .pt as Ultralytics does, code in it included (trusted files only)")
    parser.add_argument("--lease-wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long for another run on the same dataset to finish (default 0: stop at once)")
    parser.add_argument("--prefix", default="", help="backfill only keys under this prefix, e.g. garments/2026-11/")
    parser.add_argument("--since", type=moment, default=None, help="backfill only sources modified at or after (ISO 8601)")
    parser.add_argument("--until", type=moment, default=None, help="backfill only sources modified before (ISO 8601)")
    parser.add_argument(
        "--full-refresh", action="store_true", help="ignore what the dataset holds: rerun every stage of the selection"
    )
    add_storage_arguments(parser)
    parser.add_argument(
        "--max-failed-fraction", type=float, default=0.1,
        help="exit 1 (and the flow run ends Failed) when more than this share of processed items failed (default 0.1)",
    )
    add_output_arguments(parser)


def moment(text: str):
    """An ISO 8601 date or time for --since/--until (a date alone is midnight UTC)."""
    from datetime import datetime

    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def config_from_args(args: argparse.Namespace, **overrides: Any):
    from tasks.records.config import PreprocessConfig

    values = dict(
        catalog=args.catalog,
        out=args.out,
        parser=args.parser,
        shard_size=args.shard_size,
        split=args.split,
        fit=args.fit,
        agnostic_recipe=args.agnostic_recipe,
        pose_model=args.pose_model,
        cloth_mask_model=args.cloth_mask_model,
        workers=args.workers,
        parse_batch_size=args.parse_batch_size,
        max_source_bytes=args.max_source_bytes,
        lease_wait_s=args.lease_wait,
        trust_weights=args.trust_weights,
        max_torso_tilt_deg=args.max_torso_tilt,
        max_other_person_scale=args.max_other_person_scale,
        storage_options=storage_options_from(args.storage_option),
        storage_secret_block=args.storage_secret_block,
    )
    values.update(overrides)
    return PreprocessConfig(**values)


class RunLink(logging.Handler):
    """Prints the run's UI page on stderr as it starts, when the run goes to a configured Prefect server
    (the temporary server of a run without one is gone when the command ends: no link then)."""

    def __init__(self, ui_url: str):
        super().__init__()
        self.ui_url, self.page = ui_url, None

    def emit(self, record: logging.LogRecord) -> None:
        from flows.report import flow_run_page

        self.page = flow_run_page(self.ui_url, record.flow_run_id)
        print(f"watch the run at {self.page}", file=sys.stderr, flush=True)


def configured_ui_url() -> str | None:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return settings.ui_url if settings.api.url else None


def run_flow(config, show_progress: bool = True, **selection: Any) -> dict[str, Any]:
    from flows.preprocess import preprocess
    from flows.report import progress_logger, run_logger
    from tasks.engine.workers import warm_up

    warm_up(config)  # the worker processes start while Prefect starts its temporary API server
    ui_url = configured_ui_url()
    link = RunLink(ui_url) if ui_url else None
    if link is not None:
        run_logger.addHandler(link)
        run_logger.setLevel(logging.INFO)
    try:
        with progress_bar(progress_logger, show_progress, "preprocess"):
            summary = preprocess(**config.model_dump(), **selection)
    finally:
        if link is not None:
            run_logger.removeHandler(link)
    if link is not None and link.page:
        summary = {**summary, "ui_url": link.page}
    return summary


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

    config = config_from_args(args)
    try:
        with stdout_for_json(args.json):
            summary = run_flow(
                config,
                show_progress=not args.no_progress and not args.json,
                prefix=args.prefix,
                since=args.since,
                until=args.until,
                full_refresh=args.full_refresh,
                max_failed_fraction=args.max_failed_fraction,
            )
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
        "Run the preprocess flow locally: pose, parsing, cloth masks and agnostic images for every photo."
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
