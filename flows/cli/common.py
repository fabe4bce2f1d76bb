"""What every `vitonprep` subcommand shares: progress bars, storage options, names lists, JSON on stdout."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


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


class CountBar:
    """A tqdm bar on stderr over items done of a total (`bar(done, total)`), when stderr is a terminal."""

    def __init__(self, enabled: bool, desc: str, unit: str = "item"):
        self.enabled = enabled and sys.stderr.isatty()
        self.desc, self.unit = desc, unit
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=self.unit, desc=self.desc, file=sys.stderr)
        self.bar.n = done
        if done == total or done % 64 == 0:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def add_storage_arguments(parser: argparse.ArgumentParser, secret_block: bool = True) -> None:
    """`--storage-option KEY=VALUE` (repeatable) and, where the flow loads one, `--storage-secret-block`."""
    parser.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="an fsspec storage option for every URL (repeatable; VALUE is JSON or a string), "
        "e.g. endpoint_url=http://minio:9000; never a credential",
    )
    if secret_block:
        parser.add_argument(
            "--storage-secret-block", default=None, metavar="NAME",
            help="a Prefect Secret block holding the storage credentials as a JSON object (key, secret, ...); "
            "credentials are never storage options",
        )


def add_output_arguments(parser: argparse.ArgumentParser, what: str = "the run summary", progress: bool = True) -> None:
    """`--json` (what the command prints, as JSON alone on stdout) and `--no-progress`."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_storage_option(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` -> (key, value); VALUE is read as JSON where it parses (true, 3, {...}), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--storage-option wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def storage_options_from(pairs: Sequence[str]) -> dict[str, Any]:
    """Every `--storage-option KEY=VALUE` as one options dict."""
    return dict(parse_storage_option(pair) for pair in pairs)


@contextmanager
def stdout_for_json(as_json: bool) -> Iterator[None]:
    """With `--json`, stdout carries the JSON alone: whatever libraries print goes to stderr."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def names_list(values: Sequence[str] | None) -> list[str] | None:
    """--persons a,b --persons c -> [a, b, c]; None when the option was not given."""
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


