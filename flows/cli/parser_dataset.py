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

from flows.cli.common import add_model_arguments, add_output_arguments, model_from_args

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


def add_parser_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    from tasks.tools.parser_dataset import ParserDatasetConfig

    add_model_arguments(parser, ParserDatasetConfig)
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

    config = model_from_args(ParserDatasetConfig, args)
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
    parser.set_defaults(func=cmd_parser_dataset)
    return parser
