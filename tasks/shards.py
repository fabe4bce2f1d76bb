"""Thin Prefect tasks: each runs one stage over one shard of work items.

A task reads its inputs from the dataset store, calls the stage's pure function per item and writes
the outputs. It returns, per item stem, the manifest fields it learned. A bad item becomes an error
field and the shard goes on; a storage failure raises and Prefect retries the task (every write is
atomic and every name deterministic, so a retry just writes again).
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

from tasks import contract, errors
from tasks.catalog import PERSON
from tasks.config import PreprocessConfig
from tasks.errors import ItemError
from tasks.plan import WorkItem, stages_for
from tasks.runtime import TASK_OPTIONS, gpu_slot
from tasks.storage import Store, local_file, sha256_hex

Fields = dict[str, Any]
StageResult = dict[str, Fields]  # stem -> manifest fields of the items the stage ran for



def split_path(config: PreprocessConfig, folder: str, name: str) -> str:
    return f"{config.split}/{folder}/{name}"


def pose_sidecar_path(config: PreprocessConfig, stem: str) -> str:
    return f"{contract.WORK_DIR}/{config.split}/pose/{stem}.npz"


def output_paths(config: PreprocessConfig, kind: str, stem: str) -> list[str]:
    """Every file the stages write for one item."""
    if kind != PERSON:
        return [
            split_path(config, contract.DIR_CLOTH, contract.cloth_image_name(stem)),
            split_path(config, contract.DIR_CLOTH_MASK, contract.cloth_mask_name(stem)),
        ]
    return [
        split_path(config, contract.DIR_IMAGE, contract.person_image_name(stem)),
        split_path(config, contract.DIR_POSE_JSON, contract.keypoints_json_name(stem)),
        split_path(config, contract.DIR_POSE_IMG, contract.rendered_pose_name(stem)),
        split_path(config, contract.DIR_PARSE, contract.parse_name(stem)),
        split_path(config, contract.DIR_PARSE_AGNOSTIC, contract.parse_agnostic_name(stem)),
        split_path(config, contract.DIR_AGNOSTIC, contract.agnostic_name(stem)),
        pose_sidecar_path(config, stem),
    ]


def decode_rgb(data: bytes) -> np.ndarray:
    """Our own written images back as RGB arrays (what VITON-HD's loaders will see)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def run_items(
    stage: str,
    works: Sequence[WorkItem],
    dependencies: Sequence[StageResult],
    process: Callable[[WorkItem, Fields], None],
) -> StageResult:
    """Run `process` for each item that needs this stage; record item errors and milliseconds.

    An item runs when the plan says so, or when a stage it depends on changed its output in this run;
    it is marked `blocked` (and gets no manifest row for this stage) when a stage it depends on failed. `process` fills the item's manifest fields as it
    learns them, so a failure keeps what was known before it (a source's hash and size, say).
    """
    result: StageResult = {}
    for work in works:
        upstream = [dependency[work.stem] for dependency in dependencies if work.stem in dependency]
        if any(fields.get("error_code") or fields.get("blocked") for fields in upstream):
            result[work.stem] = {"blocked": True}  # failed (and recorded) in an earlier stage
            continue
        wanted = stage in work.stages or any(fields.get("changed") for fields in upstream)
        if stage == "ingest":
            wanted = wanted or work.verify_content
        if not wanted:
            continue
        fields: Fields = {"changed": True}
        started = time.perf_counter()
        try:
            process(work, fields)
        except ItemError as error:
            fields.update(error_code=error.code, error_message=error.message)
        fields["ms"] = (time.perf_counter() - started) * 1000.0
        result[work.stem] = fields
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
# ingest: read and hash the source, normalise to 768x1024 RGB, write image/ or cloth/


def ingest_items(config: PreprocessConfig, works: Sequence[WorkItem]) -> StageResult:
    from tasks.normalize import decode_image, encode_jpeg, fit_to_canvas

    catalog, out = Store(config.catalog, config.storage_options), Store(config.out, config.storage_options)
    persons = bool(works) and works[0].kind == PERSON
    with ExitStack() as stack:
        locator = None
        if persons and config.fit == "crop":
            from tasks.pose import PoseEstimator

            locator = stack.enter_context(PoseEstimator(segmentation=True))

        def process(work: WorkItem, fields: Fields) -> None:
            item = work.item
            data = catalog.read_bytes(item.rel)
            fields.update(sha256=sha256_hex(data), source_bytes=len(data))
            # Only the listing changed and the bytes did not: nothing downstream needs to run.
            fields["changed"] = "ingest" in work.stages or fields["sha256"] != work.previous_sha256
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
            fields.update(fit=json.dumps(fit.to_dict(), sort_keys=True), outputs=[rel])

        return run_items("ingest", works, [], process)


@task(name="ingest", **TASK_OPTIONS)
def ingest_shard(config: PreprocessConfig, works: list[WorkItem]) -> StageResult:
    return ingest_items(config, works)


# ---------------------------------------------------------------------------------------------
# pose: BODY_25 JSON, rendered skeleton, and the pose model's outputs for the parser


def pose_items(config: PreprocessConfig, works: Sequence[WorkItem], ingested: StageResult) -> StageResult:
    from tasks.agnostic import check_agnostic_keypoints
    from tasks.normalize import FitRecord, encode_png
    from tasks.pose import (
        PoseEstimator,
        openpose_json,
        pose_to_npz_bytes,
        render_body25,
    )

    out = Store(config.out, config.storage_options)
    model_path = local_file(config.pose_model, config.storage_options) if config.pose_model else None
    with PoseEstimator(task_model_path=model_path, visibility_threshold=config.visibility_threshold) as estimator:

        def process(work: WorkItem, fields: Fields) -> None:
            stem = work.stem
            image = decode_rgb(out.read_bytes(split_path(config, contract.DIR_IMAGE, contract.person_image_name(stem))))
            fields["model"] = estimator.backend_id
            fit = FitRecord.from_dict(json.loads(ingested.get(stem, {}).get("fit") or work.previous_fit))
            pose = guarded("pose", lambda: estimator.estimate(image, valid_box=fit.content_box()))
            fields.update(
                persons_detected=int(pose.persons_detected),
                keypoint_confidences=[float(c) for c in pose.keypoints_body25[:, 2]],
            )
            # Fail early: without these joints the agnostic masks would be silently wrong.
            check_agnostic_keypoints(pose.keypoints_body25)
            json_rel = split_path(config, contract.DIR_POSE_JSON, contract.keypoints_json_name(stem))
            img_rel = split_path(config, contract.DIR_POSE_IMG, contract.rendered_pose_name(stem))
            out.write_bytes(pose_sidecar_path(config, stem), pose_to_npz_bytes(pose))
            out.write_text(json_rel, json.dumps(openpose_json(pose.keypoints_body25)))
            out.write_bytes(img_rel, encode_png(render_body25(pose.keypoints_body25)))
            fields["outputs"] = [json_rel, img_rel]

        return run_items("pose", works, [ingested], process)


@task(name="pose", **TASK_OPTIONS)
def pose_shard(config: PreprocessConfig, works: list[WorkItem], ingested: StageResult) -> StageResult:
    return pose_items(config, works, ingested)


# ---------------------------------------------------------------------------------------------
# parse: CIHP label map


def make_parser(config: PreprocessConfig):
    from tasks.parse import parser_from_spec

    if config.parser_weights_url is None:
        return parser_from_spec("geometric")
    return parser_from_spec(f"yolo:{local_file(config.parser_weights_url, config.storage_options)}")


def parse_items(config: PreprocessConfig, works: Sequence[WorkItem], dependencies: list[StageResult]) -> StageResult:
    from tasks.parse import encode_parse_png
    from tasks.pose import pose_from_npz_bytes

    out = Store(config.out, config.storage_options)
    parser = make_parser(config)
    try:

        def process(work: WorkItem, fields: Fields) -> None:
            stem = work.stem
            image = decode_rgb(out.read_bytes(split_path(config, contract.DIR_IMAGE, contract.person_image_name(stem))))
            fields["model"] = parser.parser_id
            if config.parser_backend == "geometric":
                pose = pose_from_npz_bytes(out.read_bytes(pose_sidecar_path(config, stem)))
                labels = guarded("parse", lambda: parser.parse(image, pose))
            else:
                labels = guarded("parse", lambda: parser.parse(image))
            rel = split_path(config, contract.DIR_PARSE, contract.parse_name(stem))
            out.write_bytes(rel, encode_parse_png(labels))
            fields["outputs"] = [rel]

        return run_items("parse", works, dependencies, process)
    finally:
        close = getattr(parser, "close", None)
        if close is not None:
            close()


def parser_on_gpu(config: PreprocessConfig) -> bool:
    """The YOLO parser runs on the GPU when there is one (Ultralytics' default device)."""
    if config.parser_backend != "yolo":
        return False
    import torch

    return torch.cuda.is_available()


@task(name="parse", **TASK_OPTIONS)
def parse_shard(config: PreprocessConfig, works: list[WorkItem], dependencies: list[StageResult]) -> StageResult:
    with gpu_slot(parser_on_gpu(config)):
        return parse_items(config, works, dependencies)


# ---------------------------------------------------------------------------------------------
# cloth mask


def cloth_mask_items(config: PreprocessConfig, works: Sequence[WorkItem], ingested: StageResult) -> StageResult:
    from tasks.cloth_mask import (
        UNetClothMasker,
        cloth_mask_classical,
        encode_cloth_mask,
    )

    out = Store(config.out, config.storage_options)
    if config.cloth_mask_model:
        masker = UNetClothMasker(local_file(config.cloth_mask_model, config.storage_options))
        compute, model_id = masker.mask, masker.model_id
    else:
        compute, model_id = cloth_mask_classical, "classical-v1"

    def process(work: WorkItem, fields: Fields) -> None:
        fields["model"] = model_id
        cloth = decode_rgb(out.read_bytes(split_path(config, contract.DIR_CLOTH, contract.cloth_image_name(work.stem))))
        mask = guarded("cloth_mask", lambda: compute(cloth))
        rel = split_path(config, contract.DIR_CLOTH_MASK, contract.cloth_mask_name(work.stem))
        out.write_bytes(rel, encode_cloth_mask(mask))
        fields.update(outputs=[rel], cloth_mask_coverage=float((mask > 0).mean()))

    return run_items("cloth_mask", works, [ingested], process)


@task(name="cloth-mask", **TASK_OPTIONS)
def cloth_mask_shard(config: PreprocessConfig, works: list[WorkItem], ingested: StageResult) -> StageResult:
    return cloth_mask_items(config, works, ingested)


# ---------------------------------------------------------------------------------------------
# agnostic: parse-agnostic map and clothing-agnostic image


def agnostic_items(config: PreprocessConfig, works: Sequence[WorkItem], posed: StageResult, parsed: StageResult) -> StageResult:
    from tasks.agnostic import image_agnostic, parse_agnostic
    from tasks.normalize import encode_jpeg
    from tasks.parse import decode_parse_png, encode_parse_png
    from tasks.pose import keypoints_from_openpose_json

    out = Store(config.out, config.storage_options)

    def process(work: WorkItem, fields: Fields) -> None:
        stem = work.stem
        fields["model"] = config.agnostic_recipe
        image = decode_rgb(out.read_bytes(split_path(config, contract.DIR_IMAGE, contract.person_image_name(stem))))
        labels = decode_parse_png(out.read_bytes(split_path(config, contract.DIR_PARSE, contract.parse_name(stem))))
        keypoints = keypoints_from_openpose_json(
            json.loads(out.read_text(split_path(config, contract.DIR_POSE_JSON, contract.keypoints_json_name(stem))))
        )
        parse_free = guarded("agnostic", lambda: parse_agnostic(labels, keypoints))
        image_free = guarded("agnostic", lambda: image_agnostic(image, labels, keypoints, recipe=config.agnostic_recipe))
        parse_rel = split_path(config, contract.DIR_PARSE_AGNOSTIC, contract.parse_agnostic_name(stem))
        image_rel = split_path(config, contract.DIR_AGNOSTIC, contract.agnostic_name(stem))
        out.write_bytes(parse_rel, encode_parse_png(parse_free))
        out.write_bytes(image_rel, encode_jpeg(image_free, quality=contract.JPEG_QUALITY))
        fields["outputs"] = [parse_rel, image_rel]

    return run_items("agnostic", works, [posed, parsed], process)


@task(name="agnostic", **TASK_OPTIONS)
def agnostic_shard(config: PreprocessConfig, works: list[WorkItem], posed: StageResult, parsed: StageResult) -> StageResult:
    return agnostic_items(config, works, posed, parsed)


# ---------------------------------------------------------------------------------------------
# finish: the shard's manifest part, written last, after removing a failed item's outputs

ROW_FIELDS = ("error_code", "error_message", "outputs", "ms", "model", "fit", "persons_detected",
              "keypoint_confidences", "cloth_mask_coverage")


def finish_items(
    config: PreprocessConfig,
    run_id: str,
    shard: str,
    works: Sequence[WorkItem],
    results: Mapping[str, StageResult],
    fingerprints: Mapping[str, Mapping[str, str]],
) -> list[Fields]:
    """One manifest row per item and stage that ran; a failed item's files are all removed first."""
    from tasks.manifest import manifest_part_path, write_part

    out = Store(config.out, config.storage_options)
    rows = []
    for work in works:
        item = work.item
        ran = {
            stage: results[stage][work.stem]
            for stage in stages_for(item.kind)
            if work.stem in results.get(stage, {}) and not results[stage][work.stem].get("blocked")
        }
        if any(fields.get("error_code") for fields in ran.values()):
            # An item yields all its outputs or none: remove what this and earlier runs wrote for it.
            for rel in output_paths(config, item.kind, item.stem):
                out.remove(rel)
        ingest = ran.get("ingest", {})
        base = {
            "run_id": run_id,
            "split": config.split,
            "shard": shard,
            "kind": item.kind,
            "key": item.key,
            "source_url": item.url,
            "stem": item.stem,
            "sha256": ingest.get("sha256", work.previous_sha256),
            "source_bytes": item.size,
            "source_modified": item.modified,
            "source_etag": item.etag,
            "source_width": ingest.get("source_width"),
            "source_height": ingest.get("source_height"),
        }
        for stage, fields in ran.items():
            rows.append(
                {
                    **base,
                    **{name: fields.get(name) for name in ROW_FIELDS},
                    "stage": stage,
                    "fingerprint": fingerprints[item.kind][stage],
                    "status": "error" if fields.get("error_code") else "ok",
                }
            )
    write_part(out, manifest_part_path(config.split, run_id, shard), rows)
    return rows


@task(name="finish-shard", **TASK_OPTIONS)
def finish_shard(
    config: PreprocessConfig,
    run_id: str,
    shard: str,
    works: list[WorkItem],
    results: dict[str, StageResult],
    fingerprints: dict[str, dict[str, str]],
) -> list[Fields]:
    return finish_items(config, run_id, shard, works, results, fingerprints)
