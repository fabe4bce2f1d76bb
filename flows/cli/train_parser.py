"""`vitonprep train-parser`: train the YOLOv8-seg human parser locally and print its evaluation."""

from __future__ import annotations

import argparse
import json
from typing import Any

from flows.cli.common import add_model_arguments, add_output_arguments, model_from_args


def add_train_parser_command(commands: Any) -> None:
    parser = commands.add_parser(
        "train-parser", help="train the YOLOv8-seg human parser on a parser dataset",
        description=(
            "Run the train-parser flow locally: train (or resume) a YOLOv8-seg model on a `vitonprep parser-dataset` "
            "folder, offline, keep the best epoch, evaluate it (per-class box/mask metrics and the pixel IoU of the "
            "CIHP maps preprocess would write, beside the geometric parser's) and write the weights, curves and a "
            "model card to --out. Use the weights with `vitonprep preprocess --parser yolo:<out>/run/weights/best.pt`."
        ),
    )
    from tasks.records.config import ParserTrainConfig

    add_model_arguments(parser, ParserTrainConfig)
    add_output_arguments(parser, "the model card", progress=False)
    parser.set_defaults(func=cmd_train_parser)


def cmd_train_parser(args: argparse.Namespace) -> int:
    from flows.train_parser import card_markdown, train_parser
    from tasks.records.config import ParserTrainConfig

    config = model_from_args(ParserTrainConfig, args)
    card = train_parser(config)
    print(json.dumps(card, indent=2, sort_keys=True, default=str) if args.json else card_markdown(card))
    return 0
