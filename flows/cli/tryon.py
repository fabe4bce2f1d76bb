"""`vitonprep tryon`: the tryon flow run locally."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flows.cli.common import add_output_arguments, add_storage_arguments, names_list, progress_bar, storage_options_from


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
    add_storage_arguments(parser)
    add_output_arguments(parser)


def tryon_config_from_args(args: argparse.Namespace):
    from tasks.engine.tryon import TryOnConfig

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


def add_tryon_command(commands: argparse._SubParsersAction) -> None:
    tryon = commands.add_parser("tryon", help="render try-on images with VITON-HD's networks", description=(
        "Run the tryon flow locally: VITON-HD's seg, GMM and ALIAS networks over every pair (a pairs file, or "
        "persons x garments), writing results/<person>_<garment>.jpg, a Parquet manifest and a contact sheet. "
        "Pairs already rendered with the same checkpoints are skipped. Without trained checkpoints the "
        "networks are randomly initialised and the results are not meaningful (the run says so)."
    ))
    add_tryon_arguments(tryon)
    tryon.set_defaults(func=cmd_tryon)
