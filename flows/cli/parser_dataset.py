"""`vitonprep parser-dataset`: person images + CIHP label maps (or COCO JSON) -> an Ultralytics
segmentation dataset for training the YOLO parser (`tasks.tools.parser_dataset`).

No flow: one listing, then threaded reads, conversions and writes. `flows.cli` registers the
subcommand with `add_parser_dataset_command`.

Exit codes: 0 something was converted (skipped items are listed in report.json), 1 nothing could be
converted (or the source could not be read), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flows.cli.common import add_output_arguments, add_storage_arguments

EXIT_OK = 0
EXIT_NOTHING_CONVERTED = 1

DESCRIPTION = """\
Convert person images and their CIHP label maps into an Ultralytics (YOLO) segmentation dataset:
data.yaml, images/{train,val}/<stem>.jpg (the source bytes) and labels/{train,val}/<stem>.txt with one
polygon per connected region of each class (holes kept by zero-width bridges).

Sources: --from-parse ROOT reads <ROOT>/<split>/image/ and <ROOT>/<split>/image-parse-v3/ (our output
layout, and the VITON-HD release's); a split folder itself works too. --from-coco FILE --images URL reads
COCO instance segmentation (polygons or RLE) with categories named after the classes.

Classes: seed8 (hair, face, neck, upper_body, lower_body, left_hand, right_hand, skirt: what
`--parser yolo:` maps back to CIHP) or cihp20 (the 19 CIHP labels). Each stem goes to train or val by a
stable hash, so adding images never moves existing ones. Items that cannot be converted are skipped
with a reason and listed in <out>/report.json."""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _at_least(minimum: float, kind: type = int):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def add_parser_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    from tasks.tools.parser_dataset import CLASS_SETS, DEFAULT_EPSILON, DEFAULT_MIN_AREA, SEED8

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-parse", metavar="URL", help="dataset root (or split folder) with image/ and image-parse-v3/"
    )
    source.add_argument("--from-coco", metavar="FILE_URL", help="COCO instance segmentation JSON file")
    parser.add_argument(
        "--images", metavar="URL", help="with --from-coco: the folder its file_names are under"
    )
    parser.add_argument(
        "--out", required=True, metavar="URL", help="output root (data.yaml, images/, labels/)"
    )
    parser.add_argument("--classes", choices=CLASS_SETS, default=SEED8, help=f"class set (default {SEED8})")
    parser.add_argument(
        "--split", choices=("test", "train"), default=None,
        help="with --from-parse: the split to read (default: the root's own image/, else its only split)",
    )  # fmt: skip
    parser.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        help="share of stems in val, by stable hash (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-stem split hash (default 0)")
    parser.add_argument(
        "--min-area", type=_at_least(1), default=DEFAULT_MIN_AREA,
        help=f"drop regions (and fill holes) under this many pixels (default {DEFAULT_MIN_AREA})",
    )  # fmt: skip
    parser.add_argument(
        "--epsilon", type=_at_least(0.0, float), default=DEFAULT_EPSILON,
        help=f"polygon simplification tolerance in pixels (default {DEFAULT_EPSILON})",
    )  # fmt: skip
    parser.add_argument("--workers", type=_at_least(1), default=2, help="items converted at once (default 2)")
    add_storage_arguments(parser)
    add_output_arguments(parser, "the summary")


def print_parser_dataset_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    print(
        f"parser-dataset {summary['classes']}: {summary['source']} ({summary['format']}) -> {summary['out']}"
    )
    items = summary["items"]
    print(
        f"  items     {items['train']:6d} train {items['val']:6d} val ({summary['empty']} without any region)"
    )
    width = max(len(name) for name in summary["instances"])
    for name, count in summary["instances"].items():
        print(f"  {name:{width}s} {count:7d} instances")
    print(f"  skipped   {summary['skipped_total']:6d}")
    for reason, count in summary["skipped"].items():
        print(f"    {reason:20s} {count:6d}")
    for name, count in summary["unknown_categories"].items():
        print(f"  unknown category {name!r}: {count} annotations skipped")
    if summary["bad_annotations"]:
        print(f"  bad annotations {summary['bad_annotations']} (skipped; see the report)")
    if summary["removed_stale"]:
        print(f"  removed   {summary['removed_stale']:6d} files of an earlier run no longer in the set")
    print(f"  fingerprint {summary['fingerprint']}, {summary['seconds']:.1f} s")
    print(f"  data.yaml {summary['data_yaml']}")
    print(f"  report    {summary['report']}")
    for warning in summary["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)


def cmd_parser_dataset(args: argparse.Namespace) -> int:
    from flows.cli.common import CountBar
    from tasks.tools.parser_dataset import ParserDatasetConfig, convert_dataset

    if args.from_coco is not None and not args.images:
        args._parser.error("--from-coco needs --images URL (the folder its file_names are relative to)")
    if args.from_coco is not None and args.split is not None:
        args._parser.error("--split applies to --from-parse only")
    if args.images and args.from_coco is None:
        args._parser.error("--images applies to --from-coco only")
    config = ParserDatasetConfig(
        out=args.out,
        from_parse=args.from_parse,
        from_coco=args.from_coco,
        images=args.images,
        classes=args.classes,
        split=args.split,
        val_fraction=args.val_fraction,
        seed=args.seed,
        min_area=args.min_area,
        epsilon=args.epsilon,
        workers=args.workers,
        storage_options=dict(args.storage_options),
    )
    progress = CountBar(not args.no_progress and not args.json, "parser-dataset")
    try:
        summary = convert_dataset(config, progress=progress)
    finally:
        progress.close()
    print_parser_dataset_summary(summary, args.json)
    if not summary["converted"]:
        print(
            f"vitonprep parser-dataset: nothing could be converted; see {summary['report']}", file=sys.stderr
        )
        return EXIT_NOTHING_CONVERTED
    return EXIT_OK


def add_parser_dataset_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `parser-dataset` on the `vitonprep` subcommand parser; returns the new subparser."""
    parser = subparsers.add_parser(
        "parser-dataset",
        help="convert CIHP label maps (or COCO JSON) into an Ultralytics segmentation dataset",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_parser_dataset_arguments(parser)
    parser.set_defaults(func=cmd_parser_dataset, _parser=parser)
    return parser
