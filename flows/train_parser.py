"""The `train-parser` flow: a parser dataset in, a trained YOLOv8-seg human parser and its evaluation out.

train (or resume) -> export weights, results.csv and curves -> Ultralytics' per-class table on the
val split -> pixel IoU of the CIHP maps the parse stage would write, for the trained parser and the
bundled geometric one -> the model card. Everything lands at `out`; `--parser yolo:<out>/run/weights/best.pt`
then uses the parser in preprocess.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.report import run_parameter
from tasks.infra.redaction import redact
from tasks.infra.runtime import TASK_OPTIONS, gpu_slot, use_storage_secret
from tasks.infra.store import Store
from tasks.records.config import ParserTrainConfig
from tasks.stages.contact_sheet import thumbnail_data_uri
from tasks.tools import parser_training

CLASS_TABLE = "eval/per_class.parquet"
PIXEL_TABLE = "eval/pixel_iou.parquet"


def run_name() -> str:
    config = run_parameter("config", ParserTrainConfig)
    if config is None:
        return "train-parser"
    return f"{config.model} for {config.epochs} epochs on {redact(config.data)}"


def on_gpu(config: ParserTrainConfig) -> bool:
    return parser_training.device_argument(config.device) == 0


@task(name="train-parser-model", **TASK_OPTIONS)
def train_model(config: ParserTrainConfig) -> dict[str, Any]:
    """Train or resume; a retry resumes from the last epoch's checkpoint."""
    logger = get_run_logger()
    with gpu_slot(on_gpu(config)):
        info = parser_training.train(config, log=logger.info)
    save_dir = parser_training.working_dir(config) / parser_training.RUN_DIR
    info["exported"] = parser_training.export(config, save_dir)
    rows = parser_training.read_results(save_dir)
    info["epochs_run"] = len(rows)
    info["best"] = parser_training.best_epoch(rows)
    return info


@task(name="evaluate-parser", **TASK_OPTIONS)
def evaluate_model(config: ParserTrainConfig) -> dict[str, Any]:
    """The per-class box/mask table and the pixel IoU of the trained parser (and the geometric one)."""
    save_dir = parser_training.working_dir(config) / parser_training.RUN_DIR
    data_yaml, spec = parser_training.local_dataset(config)
    weights = save_dir / "weights" / "best.pt"
    with gpu_slot(on_gpu(config)):
        classes = parser_training.evaluate_classes(config, weights, data_yaml)
        pixel = parser_training.evaluate_pixels(config, weights, data_yaml, spec)
    out = Store(config.out, config.storage_options)
    write_parquet(out, CLASS_TABLE, classes)
    write_parquet(out, PIXEL_TABLE, pixel)
    return {"classes": classes, "pixel": pixel}


def write_parquet(out: Store, rel: str, rows: list[dict[str, Any]]) -> str:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return out.write_bytes(rel, buffer.getvalue())


@flow(name="train-parser", flow_run_name=run_name, log_prints=False)
def train_parser(config: ParserTrainConfig) -> dict[str, Any]:
    """Train the YOLOv8-seg human parser offline, evaluate it, write the weights and a model card.

    Args:
        config: the parser dataset, the output, the model to train or fine-tune, the schedule and the device.
    """
    use_storage_secret(config.storage_secret_block)
    logger = get_run_logger()
    trained = train_model(config)
    evaluation = evaluate_model(config)
    card = model_card(config, trained, evaluation)
    store = Store(config.out, config.storage_options)
    store.write_text("model_card.json", json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    store.write_text("model_card.md", card_markdown(card))
    publish(store, card)
    logger.info("parser weights: %s (mask mAP50 %.3f, mean pixel IoU %s)", card["weights"],
                card["metrics"]["mask_map50"], card["metrics"]["mean_iou"])
    return card


def model_card(config: ParserTrainConfig, trained: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    spec = parser_training.dataset_spec(config)  # no second copy of the dataset just for its metadata
    overall = next(row for row in evaluation["classes"] if row["class"] == "all")
    means = {row["parser"]: row["iou"] for row in evaluation["pixel"] if row["label"] == "mean"}
    names = {int(k): v for k, v in spec["names"].items()}
    return {
        "weights": parser_training.weights_url(config),
        "classes": [names[k] for k in sorted(names)],
        "class_to_cihp": spec.get("class_to_cihp"),
        "data": {"url": redact(config.data), "fingerprint": spec.get("fingerprint"), "classes": spec.get("classes")},
        "training": {**config.model_dump(exclude={"storage_options"}), "epochs_run": trained["epochs_run"],
                     "resumed_from_epoch": trained["resumed_from_epoch"],
                     "best_epoch": int(trained["best"]["epoch"]) if trained.get("best") else None},
        "metrics": {
            "box_map50": overall["box_map50"], "box_map50_95": overall["box_map50_95"],
            "mask_map50": overall["mask_map50"], "mask_map50_95": overall["mask_map50_95"],
            "mean_iou": means.get("yolo"), "geometric_mean_iou": means.get("geometric"),
        },
        "per_class": evaluation["classes"],
        "pixel_iou": evaluation["pixel"],
        "versions": {name: importlib.metadata.version(name) for name in ("ultralytics", "torch")},
    }


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        "# Human parser (YOLOv8-seg)", "",
        f"- weights: `{card['weights']}` (use `--parser yolo:` followed by this URL)",
        f"- classes: {', '.join(card['classes'])}",
        f"- class -> CIHP: {card['class_to_cihp']}",
        f"- data: {card['data']['url']} (fingerprint {card['data']['fingerprint']})",
        (f"- trained: {card['training']['model']}, {card['training']['epochs_run']} epochs at "
         f"{card['training']['imgsz']} (best epoch {card['training']['best_epoch']}), "
         f"Ultralytics {card['versions']['ultralytics']}"),
        "",
        ("| class | images | instances | box P | box R | box mAP50 | box mAP50-95 | mask P | mask R | mask mAP50 "
         "| mask mAP50-95 |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in card["per_class"]:
        lines.append(
            f"| {row['class']} | {row['images']} | {row['instances']} | {row['box_p']:.3f} | {row['box_r']:.3f} | "
            f"{row['box_map50']:.3f} | {row['box_map50_95']:.3f} | {row['mask_p']:.3f} | {row['mask_r']:.3f} | "
            f"{row['mask_map50']:.3f} | {row['mask_map50_95']:.3f} |"
        )
    lines += ["", "| parser | label | pixel IoU |", "|---|---|---:|"]
    for row in card["pixel_iou"]:
        iou = "-" if row["iou"] is None else f"{row['iou']:.3f}"
        lines.append(f"| {row['parser']} | {row['label']} | {iou} |")
    return "\n".join(lines) + "\n"


def publish(store: Store, card: dict[str, Any]) -> None:
    create_table_artifact(card["per_class"], key="train-parser-classes", description="Per-class box and mask metrics (val)")
    create_table_artifact(card["pixel_iou"], key="train-parser-pixel-iou",
                          description="Pixel IoU of the CIHP maps preprocess would write (val)")
    curves = ""
    if store.exists("curves.png"):
        curves = f"\n![training curves]({thumbnail_data_uri(store.read_bytes('curves.png'), 400)})\n"
    create_markdown_artifact(card_markdown(card) + curves, key="train-parser-model-card", description="Model card")
