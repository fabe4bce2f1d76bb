"""`vitonprep`: the command line. Each subcommand runs a flow locally and prints what it did."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from typing import Any

from tasks.config import DEFAULT_MAX_SOURCE_BYTES, DEFAULT_PARSE_BATCH_SIZE


def _offline_environment() -> None:
    # Set before Ultralytics or Prefect are imported: nothing may reach the network at run time.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary local API server needs more than Prefect's default 20 s on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # MediaPipe's native logging (TFLite feedback warnings) otherwise floods stderr.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class ProgressBar(logging.Handler):
    """Draws a flow's progress records (`done`, `total`) as a tqdm bar on stderr."""

    def __init__(self, enabled: bool, desc: str = "preprocess", unit: str = "shard"):
        super().__init__()
        self.enabled, self.desc, self.unit = enabled, desc, unit
        self.bar = None

    def emit(self, record: logging.LogRecord) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=getattr(record, "total", 0), unit=self.unit, desc=self.desc, file=sys.stderr)
        self.bar.n = getattr(record, "done", 0)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        super().close()


@contextmanager
def progress_bar(logger: logging.Logger, enabled: bool, desc: str, unit: str = "shard") -> Iterator[None]:
    """A ProgressBar listening to `logger` for the duration of a run."""
    handler = ProgressBar(enabled, desc, unit)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


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
    parser.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="an fsspec storage option for every URL (repeatable; VALUE is JSON or a string), "
        "e.g. endpoint_url=http://minio:9000; never a credential",
    )
    parser.add_argument(
        "--storage-secret-block", default=None, metavar="NAME",
        help="a Prefect Secret block holding the storage credentials as a JSON object (key, secret, ...); "
        "credentials are never storage options",
    )
    parser.add_argument(
        "--max-failed-fraction", type=float, default=0.1,
        help="exit 1 (and the flow run ends Failed) when more than this share of processed items failed (default 0.1)",
    )
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def moment(text: str):
    """An ISO 8601 date or time for --since/--until (a date alone is midnight UTC)."""
    from datetime import datetime

    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def storage_options_from(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--storage-option wants KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def config_from_args(args: argparse.Namespace, **overrides: Any):
    from tasks.config import PreprocessConfig

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
    from tasks.workers import warm_up

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


@contextmanager
def stdout_for_json(as_json: bool) -> Iterator[None]:
    """With `--json`, stdout carries the JSON alone: whatever libraries print goes to stderr."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


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


def names_list(values: Sequence[str] | None) -> list[str] | None:
    """--persons a,b --persons c -> [a, b, c]; None when the option was not given."""
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def add_tryon_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset root URL (<split>/ and <split>_pairs.txt)")
    parser.add_argument("--out", required=True, help="output root URL (results/, manifests/tryon/, contact sheet)")
    parser.add_argument("--split", default="test", help="dataset split to read (default test)")
    parser.add_argument(
        "--pairs", default=None, metavar="URL", help="pairs file URL (default <dataset>/<split>_pairs.txt)"
    )
    parser.add_argument(
        "--persons", action="append", default=None, metavar="NAMES",
        help="person stems or names, comma-separated or repeated; with --garments: their cross product",
    )
    parser.add_argument(
        "--garments", action="append", default=None, metavar="NAMES",
        help="garment stems or names, comma-separated or repeated; with --persons",
    )
    parser.add_argument(
        "--checkpoints", default=None, metavar="URL",
        help="folder with seg_final.pth, gmm_final.pth, alias_final.pth; missing ones are randomly initialised",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per forward pass (default 4)")
    parser.add_argument("--shard-size", type=int, default=32, help="pairs per task run (default 32)")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="'auto' (default): CUDA when there is one"
    )
    parser.add_argument(
        "--precision", choices=("fp32", "fp16"), default="fp32", help="fp16: seg and ALIAS under autocast, CUDA only"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of random init and (with the pair's names) of each pair's noise")
    parser.add_argument(
        "--agnostic", choices=("vitonhd", "hrviton", "disk"), default="vitonhd",
        help="clothing-agnostic image: VITON-HD's recipe online (default), HR-VITON's, or agnostic-v3.2/ on disk",
    )
    parser.add_argument("--workers", type=int, default=2, help="task runs in flight at once (default 2)")
    parser.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="an fsspec storage option for every URL (repeatable; VALUE is JSON or a string); never a credential",
    )
    parser.add_argument(
        "--storage-secret-block", default=None, metavar="NAME",
        help="a Prefect Secret block holding the storage credentials as a JSON object (key, secret, ...); "
        "credentials are never storage options",
    )
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def tryon_config_from_args(args: argparse.Namespace):
    from tasks.tryon import TryOnConfig

    return TryOnConfig(
        dataset=args.dataset,
        out=args.out,
        split=args.split,
        pairs=args.pairs,
        persons=names_list(args.persons),
        garments=names_list(args.garments),
        checkpoints=args.checkpoints,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        agnostic=args.agnostic,
        storage_options=storage_options_from(args.storage_option),
        storage_secret_block=args.storage_secret_block,
    )


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

    config = tryon_config_from_args(args)
    from flows.report import progress_logger
    from flows.tryon import tryon

    with progress_bar(progress_logger, not args.no_progress and not args.json, "tryon"):
        bounded = tryon.with_options(task_runner=ThreadPoolTaskRunner(max_workers=args.workers))
        summary = bounded(**config.model_dump())
    print_tryon_summary(summary, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitonprep", description="Prepare VITON-HD / HR-VITON try-on datasets from catalog photos."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    demo.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo)

    tryon = commands.add_parser("tryon", help="render try-on images with VITON-HD's networks", description=(
        "Run the tryon flow locally: VITON-HD's seg, GMM and ALIAS networks over every pair (a pairs file, or "
        "persons x garments), writing results/<person>_<garment>.jpg, a Parquet manifest and a contact sheet. "
        "Pairs already rendered with the same checkpoints are skipped. Without trained checkpoints the "
        "networks are randomly initialised and the results are not meaningful (the run says so)."
    ))
    add_tryon_arguments(tryon)
    tryon.set_defaults(func=cmd_tryon)

    from flows.parser_dataset_cli import add_parser_dataset_command
    from flows.train_cli import add_train_command
    from flows.train_parser_cli import add_train_parser_command
    from flows.validate import add_validate_command

    add_train_command(commands)
    add_parser_dataset_command(commands)
    add_train_parser_command(commands)
    add_validate_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _offline_environment()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:  # the run itself failed: say why, exit non-zero
        from pydantic import ValidationError

        if isinstance(error, ValidationError):
            print(f"vitonprep: invalid configuration:\n{error}", file=sys.stderr)
            return 2
        print(f"vitonprep: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
