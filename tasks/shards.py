"""Thin Prefect tasks: each runs one stage over one shard of items.

A task reads its inputs from the dataset store, calls the stage's pure function per item and writes
the outputs. It returns, per item stem, the manifest fields it learned. A bad item becomes an error
field and the shard goes on; a storage failure raises and Prefect retries the task.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import contract, errors
from tasks.catalog import PERSON, CatalogItem
from tasks.config import PreprocessConfig
from tasks.errors import ItemError
from tasks.storage import Store, local_file, sha256_hex

Fields = dict[str, Any]
StageResult = dict[str, Fields]  # stem -> manifest fields

WORK_DIR = "_work"  # intermediate files (pose model outputs reused by the geometric parser)
TASK_OPTIONS = dict(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE, persist_result=False)


def split_path(config: PreprocessConfig, folder: str, name: str) -> str:
    return f"{config.split}/{folder}/{name}"


def pose_sidecar_path(config: PreprocessConfig, stem: str) -> str:
    return f"{WORK_DIR}/{config.split}/pose/{stem}.npz"


def merge(*results: StageResult | None) -> StageResult:
    merged: StageResult = {}
    for result in results:
        for stem, fields in (result or {}).items():
            merged.setdefault(stem, {}).update(fields)
    return merged


def decode_rgb(data: bytes) -> np.ndarray:
    """Our own written images back as RGB arrays (what VITON-HD's loaders will see)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def run_items(
    stage: str,
    items: Sequence[CatalogItem],
    upstream: Mapping[str, Fields] | None,
    process: Callable[[CatalogItem, Fields], None],
) -> StageResult:
    """Apply `process` to each item still healthy upstream; record item errors and milliseconds.

    `process` fills the item's manifest fields as it learns them, so a failure keeps what was
    known before it (a source's hash and size, say).
    """
    result: StageResult = {}
    for item in items:
        if upstream is not None and (item.stem not in upstream or upstream[item.stem].get("error_code")):
            continue  # failed (and recorded) in an earlier stage
        fields: Fields = {}
        started = time.perf_counter()
        try:
            process(item, fields)
        except ItemError as error:
            fields.update(error_code=error.code, error_message=error.message, failed_stage=stage)
        fields[f"{stage}_ms"] = (time.perf_counter() - started) * 1000.0
        result[item.stem] = fields
    return result


def guarded(stage: str, compute: Callable[[], Any]) -> Any:
    """Run the pure computation of one item; any error in it becomes that item's error.

    Only computation goes through here, never storage I/O: a storage error must fail the task.
    """
    try:
        return compute()
    except ItemError:
        raise
    except Exception as error:  # noqa: BLE001 - one bad image must never fail its shard
        raise ItemError(errors.STAGE_ERROR, f"{stage} failed: {type(error).__name__}: {error}") from error


# ---------------------------------------------------------------------------------------------
# ingest: decode, normalise to 768x1024 RGB, write image/ or cloth/


def ingest_items(config: PreprocessConfig, items: Sequence[CatalogItem]) -> StageResult:
    from tasks.normalize import decode_image, encode_jpeg, fit_to_canvas

    catalog, out = Store(config.catalog, config.storage_options), Store(config.out, config.storage_options)
    persons = bool(items) and items[0].kind == PERSON
    with ExitStack() as stack:
        locator = None
        if persons and config.fit == "crop":
            from tasks.pose import PoseEstimator

            locator = stack.enter_context(PoseEstimator(segmentation=True))

        def process(item: CatalogItem, fields: Fields) -> None:
            data = catalog.read_bytes(item.rel)
            fields.update(sha256=sha256_hex(data), source_bytes=len(data))
            image = guarded("ingest", lambda: decode_image(data, max_pixels=config.max_pixels))
            array = np.asarray(image)
            fields.update(source_width=image.width, source_height=image.height)
            box = guarded("ingest", lambda: locator.person_box(array)) if locator is not None else None
            method = config.fit if persons else "pad"
            canvas, fit = guarded("ingest", lambda: fit_to_canvas(array, method=method, person_box=box))
            folder = contract.DIR_IMAGE if persons else contract.DIR_CLOTH
            name = contract.person_image_name(item.stem) if persons else contract.cloth_image_name(item.stem)
            rel = split_path(config, folder, name)
            out.write_bytes(rel, encode_jpeg(canvas, quality=contract.JPEG_QUALITY))
            fields["fit"] = json.dumps(fit.to_dict(), sort_keys=True)
            fields["image_path" if persons else "cloth_path"] = rel

        return run_items("ingest", items, None, process)


@task(name="ingest", **TASK_OPTIONS)
def ingest_shard(config: PreprocessConfig, items: list[CatalogItem]) -> StageResult:
    return ingest_items(config, items)


# ---------------------------------------------------------------------------------------------
# pose: BODY_25 JSON, rendered skeleton, and the pose model's outputs for the parser


def pose_items(config: PreprocessConfig, items: Sequence[CatalogItem], upstream: Mapping[str, Fields]) -> StageResult:
    from tasks.agnostic import check_agnostic_keypoints
    from tasks.normalize import FitRecord, encode_png
    from tasks.pose import PoseEstimator, openpose_json, pose_to_npz_bytes, render_body25

    out = Store(config.out, config.storage_options)
    model_path = local_file(config.pose_model, config.storage_options) if config.pose_model else None
    with PoseEstimator(task_model_path=model_path, visibility_threshold=config.visibility_threshold) as estimator:

        def process(item: CatalogItem, fields: Fields) -> None:
            image = decode_rgb(out.read_bytes(split_path(config, contract.DIR_IMAGE, contract.person_image_name(item.stem))))
            fields["pose_model"] = estimator.backend_id
            fit = FitRecord.from_dict(json.loads(upstream[item.stem]["fit"]))
            pose = guarded("pose", lambda: estimator.estimate(image, valid_box=fit.content_box()))
            fields.update(
                persons_detected=int(pose.persons_detected),
                keypoint_confidences=[float(c) for c in pose.keypoints_body25[:, 2]],
            )
            # Fail early: without these joints the agnostic masks would be silently wrong.
            check_agnostic_keypoints(pose.keypoints_body25)
            json_rel = split_path(config, contract.DIR_POSE_JSON, contract.keypoints_json_name(item.stem))
            img_rel = split_path(config, contract.DIR_POSE_IMG, contract.rendered_pose_name(item.stem))
            out.write_bytes(pose_sidecar_path(config, item.stem), pose_to_npz_bytes(pose))
            out.write_text(json_rel, json.dumps(openpose_json(pose.keypoints_body25)))
            out.write_bytes(img_rel, encode_png(render_body25(pose.keypoints_body25)))
            fields.update(pose_json_path=json_rel, pose_img_path=img_rel)

        return run_items("pose", items, upstream, process)


@task(name="pose", **TASK_OPTIONS)
def pose_shard(config: PreprocessConfig, items: list[CatalogItem], upstream: StageResult) -> StageResult:
    return pose_items(config, items, upstream)


# ---------------------------------------------------------------------------------------------
# parse: CIHP label map


def make_parser(config: PreprocessConfig):
    from tasks.parse import parser_from_spec

    if config.parser_weights_url is None:
        return parser_from_spec("geometric")
    return parser_from_spec(f"yolo:{local_file(config.parser_weights_url, config.storage_options)}")


def parse_items(config: PreprocessConfig, items: Sequence[CatalogItem], upstream: Mapping[str, Fields]) -> StageResult:
    from tasks.parse import encode_parse_png
    from tasks.pose import pose_from_npz_bytes

    out = Store(config.out, config.storage_options)
    parser = make_parser(config)
    try:

        def process(item: CatalogItem, fields: Fields) -> None:
            image = decode_rgb(out.read_bytes(split_path(config, contract.DIR_IMAGE, contract.person_image_name(item.stem))))
            fields["parser_id"] = parser.parser_id
            if config.parser_backend == "geometric":
                pose = pose_from_npz_bytes(out.read_bytes(pose_sidecar_path(config, item.stem)))
                labels = guarded("parse", lambda: parser.parse(image, pose))
            else:
                labels = guarded("parse", lambda: parser.parse(image))
            rel = split_path(config, contract.DIR_PARSE, contract.parse_name(item.stem))
            out.write_bytes(rel, encode_parse_png(labels))
            fields["parse_path"] = rel

        return run_items("parse", items, upstream, process)
    finally:
        close = getattr(parser, "close", None)
        if close is not None:
            close()


@task(name="parse", **TASK_OPTIONS)
def parse_shard(config: PreprocessConfig, items: list[CatalogItem], upstream: StageResult) -> StageResult:
    return parse_items(config, items, upstream)


# ---------------------------------------------------------------------------------------------
# cloth mask


def cloth_mask_items(config: PreprocessConfig, items: Sequence[CatalogItem], upstream: Mapping[str, Fields]) -> StageResult:
    from tasks.cloth_mask import UNetClothMasker, cloth_mask_classical, encode_cloth_mask

    out = Store(config.out, config.storage_options)
    if config.cloth_mask_model:
        masker = UNetClothMasker(local_file(config.cloth_mask_model, config.storage_options))
        compute, model_id = masker.mask, masker.model_id
    else:
        compute, model_id = cloth_mask_classical, "classical-v1"

    def process(item: CatalogItem, fields: Fields) -> None:
        fields["cloth_mask_model"] = model_id
        cloth = decode_rgb(out.read_bytes(split_path(config, contract.DIR_CLOTH, contract.cloth_image_name(item.stem))))
        mask = guarded("cloth_mask", lambda: compute(cloth))
        rel = split_path(config, contract.DIR_CLOTH_MASK, contract.cloth_mask_name(item.stem))
        out.write_bytes(rel, encode_cloth_mask(mask))
        fields.update(cloth_mask_path=rel, cloth_mask_coverage=float((mask > 0).mean()))

    return run_items("cloth_mask", items, upstream, process)


@task(name="cloth-mask", **TASK_OPTIONS)
def cloth_mask_shard(config: PreprocessConfig, items: list[CatalogItem], upstream: StageResult) -> StageResult:
    return cloth_mask_items(config, items, upstream)


# ---------------------------------------------------------------------------------------------
# agnostic: parse-agnostic map and clothing-agnostic image


def agnostic_items(config: PreprocessConfig, items: Sequence[CatalogItem], upstream: Mapping[str, Fields]) -> StageResult:
    from tasks.agnostic import image_agnostic, parse_agnostic
    from tasks.normalize import encode_jpeg
    from tasks.parse import decode_parse_png, encode_parse_png
    from tasks.pose import keypoints_from_openpose_json

    out = Store(config.out, config.storage_options)

    def process(item: CatalogItem, fields: Fields) -> None:
        fields["agnostic_recipe"] = config.agnostic_recipe
        image = decode_rgb(out.read_bytes(split_path(config, contract.DIR_IMAGE, contract.person_image_name(item.stem))))
        labels = decode_parse_png(out.read_bytes(split_path(config, contract.DIR_PARSE, contract.parse_name(item.stem))))
        keypoints = keypoints_from_openpose_json(
            json.loads(out.read_text(split_path(config, contract.DIR_POSE_JSON, contract.keypoints_json_name(item.stem))))
        )
        parse_free = guarded("agnostic", lambda: parse_agnostic(labels, keypoints))
        image_free = guarded("agnostic", lambda: image_agnostic(image, labels, keypoints, recipe=config.agnostic_recipe))
        parse_rel = split_path(config, contract.DIR_PARSE_AGNOSTIC, contract.parse_agnostic_name(item.stem))
        image_rel = split_path(config, contract.DIR_AGNOSTIC, contract.agnostic_name(item.stem))
        out.write_bytes(parse_rel, encode_parse_png(parse_free))
        out.write_bytes(image_rel, encode_jpeg(image_free, quality=contract.JPEG_QUALITY))
        fields.update(parse_agnostic_path=parse_rel, agnostic_path=image_rel)

    return run_items("agnostic", items, upstream, process)


@task(name="agnostic", **TASK_OPTIONS)
def agnostic_shard(config: PreprocessConfig, items: list[CatalogItem], upstream: StageResult) -> StageResult:
    return agnostic_items(config, items, upstream)


# ---------------------------------------------------------------------------------------------
# finish: the shard's manifest part, written last, after removing a failed item's partial outputs


def finish_items(
    config: PreprocessConfig, run_id: str, shard: str, items: Sequence[CatalogItem], results: Sequence[StageResult]
) -> list[Fields]:
    from tasks.manifest import OUTPUT_COLUMNS, manifest_part_path, write_part

    out = Store(config.out, config.storage_options)
    merged = merge(*results)
    rows = []
    for item in items:
        fields = merged.get(item.stem, {})
        failed = bool(fields.get("error_code"))
        if failed:
            # An item yields all its outputs or none: drop what the stages before the failure wrote.
            for column in OUTPUT_COLUMNS:
                if fields.get(column):
                    out.remove(fields.pop(column))
            if item.kind == PERSON:
                out.remove(pose_sidecar_path(config, item.stem))
        rows.append(
            {
                **fields,
                "run_id": run_id,
                "split": config.split,
                "shard": shard,
                "kind": item.kind,
                "key": item.key,
                "source_url": item.url,
                "stem": item.stem,
                "status": "error" if failed else "ok",
            }
        )
    write_part(out, manifest_part_path(config.split, run_id, shard), rows)
    return rows


@task(name="finish-shard", **TASK_OPTIONS)
def finish_shard(
    config: PreprocessConfig, run_id: str, shard: str, items: list[CatalogItem], results: list[StageResult]
) -> list[Fields]:
    return finish_items(config, run_id, shard, items, results)
