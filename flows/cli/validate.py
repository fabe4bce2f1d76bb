"""`vitonprep validate URL`: check a dataset root against the VITON-HD / HR-VITON contract.

No flow: validation is a read-only listing plus threaded reads (`tasks.tools.validate`). `flows.cli`
registers the subcommand with `add_validate_command`; `python -m flows.cli.validate URL` runs it alone.

Exit codes: 0 no problem found, 1 problems found, 2 the dataset could not be validated (a bad option,
storage unreachable).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from flows.cli.common import CountBar, add_storage_arguments

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_ERROR = 2

DESCRIPTION = """\
Check a dataset root (ours, or a downloaded VITON-HD / HR-VITON release) against the contract the
official loaders assume: 768x1024 RGB images; parse maps with label ids 0..19 in CIHP semantics (not RGB
visualisations, not LIP's label 10); BODY_25 OpenPose JSON with one person and the keypoints the
agnostic needs; single-channel 0/255 cloth masks; every companion file present; pairs naming existing
files; file names the loaders can derive companions from.

Splits are found next to <split>_pairs.txt files, or as train/ and test/ folders; a split folder
(holding image/ and cloth/) can be given directly. Both the HR-VITON folder names (image-parse-v3,
openpose_json, openpose_img) and the VITON-HD ones (image-parse, openpose-json, openpose-img) are read.

Targets (--target, default both, reported apart): vitonhd (VITON-HD's test.py, vitonprep train and
tryon) and hrviton (HR-VITON's loaders, which also read each person's paired cloth and mask under the
person's name, image-densepose/, image-parse-agnostic-v3.2/, and only their own folder names).

Prints a report grouped by problem (--json: machine-readable) and exits 0 when no problem is found,
1 when one is, 2 when the dataset could not be read."""


def _codes_epilog() -> str:
    from tasks.tools.validate import CODES

    width = max(len(code) for code in CODES)
    codes = "\n".join(f"  {code:{width}s}  {text}" for code, text in CODES.items())
    return (
        f"problem codes (§: sections of the VITON-HD contract note, research/vitonhd-contract.md; "
        f"#: HR-VITON issues):\n{codes}"
    )


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="dataset root (a local path or an fsspec URL: file://, s3://, ...)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument(
        "--split",
        action="append",
        metavar="NAME",
        help="check only this split (repeatable; default: every split found, e.g. test and train)",
    )
    parser.add_argument("--workers", type=int, default=8, help="files read and checked at once (default 8)")
    parser.add_argument(
        "--target",
        action="append",
        choices=("vitonhd", "hrviton"),
        help="check for this consumer only (repeatable; default: both, each with its own verdict)",
    )
    add_storage_arguments(parser)
    parser.add_argument(
        "--examples", type=int, default=5, metavar="N", help="example paths shown per problem (default 5)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_validate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `validate` on the `vitonprep` subcommand parser; returns the new subparser."""
    parser = subparsers.add_parser(
        "validate",
        help="check a dataset against the VITON-HD / HR-VITON contract",
        description=DESCRIPTION,
        epilog=_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_validate_arguments(parser)
    parser.set_defaults(func=cmd_validate)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate `args.url`; print the report; 0 when clean, 1 with problems, 2 when it could not run."""
    from tasks.infra.store import Store
    from tasks.tools.validate import validate_dataset

    if args.workers < 1:
        print("vitonprep validate: --workers must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    progress = CountBar(not args.no_progress and not args.json, "validate")
    try:
        store = Store(args.url, dict(args.storage_options))
        report = validate_dataset(store, splits=args.split, workers=args.workers, progress=progress,
                                  targets=args.target or ("vitonhd", "hrviton"))
    except Exception as error:  # noqa: BLE001  (storage unreachable, credentials, a bad URL)
        print(f"vitonprep validate: cannot read {args.url}: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        progress.close()
    if args.json:
        print(json.dumps(report.to_dict(max_examples=args.examples), indent=2, sort_keys=True))
    else:
        print(report.format_text(max_examples=args.examples))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def build_parser() -> argparse.ArgumentParser:
    """A `vitonprep` parser holding only `validate` (for `python -m flows.cli.validate`)."""
    parser = argparse.ArgumentParser(prog="vitonprep", description="Prepare VITON-HD / HR-VITON try-on datasets.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_validate_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flows.cli.validate URL [options]`, the same as `vitonprep validate URL [options]`."""
    args = build_parser().parse_args(["validate", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
