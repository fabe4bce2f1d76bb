"""`vitonprep`: the command line, one module per subcommand (`flows.cli.<command>`) and what they share
(`flows.cli.common`). Each subcommand runs a flow locally and prints what it did."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


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


def build_parser() -> argparse.ArgumentParser:
    from flows.cli.parser_dataset import add_parser_dataset_command
    from flows.cli.preprocess import add_preprocess_commands
    from flows.cli.train import add_train_command
    from flows.cli.train_parser import add_train_parser_command
    from flows.cli.tryon import add_tryon_command
    from flows.cli.validate import add_validate_command

    parser = argparse.ArgumentParser(
        prog="vitonprep", description="Prepare VITON-HD / HR-VITON try-on datasets from catalog photos."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_preprocess_commands(commands)
    add_tryon_command(commands)
    add_train_command(commands)
    add_parser_dataset_command(commands)
    add_train_parser_command(commands)
    add_validate_command(commands)
    for command in commands.choices.values():  # an invalid configuration is reported with its usage
        command.set_defaults(_parser=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _offline_environment()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:  # the run itself failed: say why, exit non-zero
        from pydantic import ValidationError

        if isinstance(error, ValidationError):  # usage and the message on stderr, exit 2, as argparse does
            args._parser.error(f"invalid configuration:\n{error}")
        print(f"vitonprep: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


