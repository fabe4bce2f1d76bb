"""`vitonprep train-parser`: train the YOLOv8-seg human parser locally and print its evaluation."""

from __future__ import annotations

import argparse
import json
from typing import Any

from flows.cli.common import add_output_arguments, add_storage_arguments


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
    parser.add_argument("--data", required=True, help="folder URL of a parser dataset (data.yaml, images/, labels/)")
    parser.add_argument("--out", required=True, help="output URL (weights, results.csv, curves.png, model card, eval/)")
    parser.add_argument("--model", default="yolov8x-seg.yaml",
                        help="architecture file (from scratch) or URL of .pt weights to fine-tune (default yolov8x-seg.yaml)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs (default 100; a rerun resumes)")
    parser.add_argument("--imgsz", type=int, default=1024, help="image size in pixels (default 1024)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--patience", type=int, default=50, help="epochs without improvement before stopping")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--no-geometric", action="store_true", help="skip evaluating the geometric parser")
    parser.add_argument("--trust-weights", action="store_true",
                        help="load .pt checkpoints as Ultralytics does, code in them included (trusted files only)")
    add_storage_arguments(parser)
    add_output_arguments(parser, "the model card", progress=False)
    parser.set_defaults(func=cmd_train_parser)


def cmd_train_parser(args: argparse.Namespace) -> int:
    from flows.cli.common import storage_options_from
    from flows.train_parser import card_markdown, train_parser
    from tasks.records.config import ParserTrainConfig

    config = ParserTrainConfig(
        data=args.data, out=args.out, model=args.model, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
        device=args.device, workers=args.workers, patience=args.patience, seed=args.seed,
        compare_geometric=not args.no_geometric, storage_options=storage_options_from(args.storage_option),
        storage_secret_block=args.storage_secret_block, trust_weights=args.trust_weights,
    )  # fmt: skip
    card = train_parser(**config.model_dump())
    print(json.dumps(card, indent=2, sort_keys=True, default=str) if args.json else card_markdown(card))
    return 0
