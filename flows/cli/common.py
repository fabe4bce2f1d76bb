"""What every `vitonprep` subcommand shares: options generated from the typed configuration, progress
bars, storage options, names lists, JSON on stdout."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import types
import typing
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel


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


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """`--storage-option KEY=VALUE` (repeatable), for a command whose options no model describes."""
    parser.add_argument(
        "--storage-option", dest="storage_options", action="append", default=[], type=parse_storage_option,
        metavar="KEY=VALUE", help="an fsspec storage option for every URL (repeatable; VALUE is JSON or a string), "
        "e.g. endpoint_url=http://minio:9000; never a credential",
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




def _plain(annotation: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def moment(text: str) -> datetime:
    """An ISO 8601 date or time (a date alone is midnight; no zone is UTC)."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def add_model_arguments(
    parser: argparse.ArgumentParser, model: type[BaseModel], title: str | None = None, skip: Collection[str] = ()
) -> None:
    """One option per field of `model`, `--field-name`, with the field's type, choices, default and
    description: the model is the one source of every name, default and help text. Required fields are
    required options; `storage_options` is the repeatable `--storage-option KEY=VALUE`; a list is given
    comma-separated or repeated; a flag defaulting to on has its `--no-` form."""
    group = parser.add_argument_group(title) if title else parser
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        if name == "storage_options":
            add_storage_arguments(group)
            continue
        flag = "--" + name.replace("_", "-")
        kind = _plain(field.annotation)
        text = field.description or name
        if field.is_required():
            options: dict[str, Any] = {"required": True}
        else:
            options = {"default": field.get_default(call_default_factory=True)}
            if options["default"] not in (None, False, "", [], {}):
                text += f" (default {options['default']})"
        if kind is bool:
            action = argparse.BooleanOptionalAction if options.get("default") else "store_true"
            group.add_argument(flag, dest=name, action=action, help=text, **options)
        elif typing.get_origin(kind) is Literal:
            choices = typing.get_args(kind)
            group.add_argument(flag, dest=name, type=type(choices[0]), choices=choices, help=text, **options)
        elif typing.get_origin(kind) is list:
            group.add_argument(flag, dest=name, action="append", metavar="NAMES",
                               help=f"{text}; comma-separated or repeated", **options)
        else:
            group.add_argument(flag, dest=name, type=moment if kind is datetime else kind, help=text, **options)


def model_from_args(model: type[BaseModel], args: argparse.Namespace, **overrides: Any) -> Any:
    """The `model` the options of `add_model_arguments` describe, validated (an invalid value is a
    pydantic ValidationError, which the command line reports and exits 2 on)."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        if name == "storage_options":
            value = dict(value)
        elif typing.get_origin(_plain(field.annotation)) is list and value is not None:
            value = names_list(value)
        values[name] = value
    return model(**{**values, **overrides})
