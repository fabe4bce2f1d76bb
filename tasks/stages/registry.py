"""The stage registry: every preprocess stage, declared once.

A stage is pure. Its batch function maps the results of the stages it reads (numpy arrays and plain
data, in memory) to its own result; `encode` turns that result into the bytes of the files it
writes, one per declared `Output`; `load` turns those files back into the result, so that a later
run that reruns only a downstream stage reads what this one wrote, never the source. A result is
what its files decode to (`load(encode(result)) == result`), so a partial rerun sees exactly what a
full run saw.

Everything else derives from `STAGES`: the manifest's stage lists, the planner's dependency rules
and fingerprints, the output paths, the removal of a failed item's outputs, and the shard engine's
order of work (`tasks.engine.shard`). Adding a stage means writing its functions in its own module and
adding one entry here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from tasks.records.catalog import GARMENT, PERSON
from tasks.records.config import PreprocessConfig
from tasks.stages import agnostic, cloth_mask, normalize, parse, pose
from tasks.stages.model_cache import Weights, cached
from vitonhd_models import contract, errors
from vitonhd_models.errors import ItemError

if TYPE_CHECKING:
    from tasks.records.catalog import WorkItem


@dataclass(frozen=True)
class Output:
    """One file a stage writes per item: `<split>/<folder>/<name(stem)>`, or under `_work/<split>/`
    when `internal` (the stage's own cache for later stages, not part of the dataset)."""

    folder: str
    name: Callable[[str], str]
    internal: bool = False

    def path(self, split: str, stem: str) -> str:
        if self.internal:
            return posixpath.join(contract.WORK_DIR, split, self.folder, self.name(stem))
        return posixpath.join(split, self.folder, self.name(stem))


@dataclass(frozen=True)
class StageInput:
    """One item as a stage sees it: the results of the stages it reads, and (ingest) the source."""

    work: WorkItem
    values: Mapping[str, Any]
    source: bytes | None = None


@dataclass(frozen=True)
class StageEnv:
    """What a stage may use besides its inputs: the run's configuration, its weight files, and models
    built once per process (`model(key, build)`, key naming everything that decides the model)."""

    config: PreprocessConfig
    weights: Weights

    def model(self, key: tuple, build: Callable[[], Any]) -> Any:
        return cached(key, build)


BatchFunction = Callable[[StageEnv, Sequence[StageInput]], list[Any]]  # an ItemError in the list: that item failed


@dataclass(frozen=True)
class Stage:
    """One stage for one item kind. See the module docstring for the contract of its functions."""

    name: str
    kind: str
    version: int  # bump when the outputs change for the same inputs: every item reruns the stage
    reads: tuple[str, ...]  # the stages whose results it reads (declared before it)
    outputs: tuple[Output, ...]
    run: BatchFunction
    encode: Callable[[Any], tuple[bytes, ...]]  # one file's bytes per output
    fields: Callable[[StageEnv, Any], dict[str, Any]]  # manifest fields of a result ("model", details)
    params: Callable[[PreprocessConfig, Weights], dict[str, Any]]  # all besides the input that decides the output
    load: Callable[[WorkItem, tuple[bytes, ...]], Any] | None = None  # the result back from its files
    loads_from: tuple[int, ...] = ()  # which of `outputs` `load` reads
    # None: the stage runs per item in the worker processes. Else it runs over batches of this many
    # items in the shard task's process, on its model thread (a model on the GPU).
    batch_size: Callable[[PreprocessConfig], int] | None = None
    active: Callable[[PreprocessConfig], bool] = lambda config: True  # which variant of a stage a run uses
    prepare: Callable[[StageEnv], None] | None = None  # builds the bundled models ahead of the first item

    def paths(self, split: str, stem: str) -> list[str]:
        return [output.path(split, stem) for output in self.outputs]

    def listed_paths(self, split: str, stem: str) -> list[str]:
        """The dataset files the manifest lists for this stage (internal caches are not listed)."""
        return [output.path(split, stem) for output in self.outputs if not output.internal]

    def load_paths(self, split: str, stem: str) -> list[str]:
        return [self.outputs[index].path(split, stem) for index in self.loads_from]


def per_item(function: Callable[[StageEnv, StageInput], Any]) -> BatchFunction:
    """A batch function from a one-item function: an item's exception becomes that item's error."""

    def run(env: StageEnv, batch: Sequence[StageInput]) -> list[Any]:
        results = []
        for item in batch:
            try:
                results.append(function(env, item))
            except ItemError as error:
                results.append(error)
            except Exception as error:  # noqa: BLE001 - one bad image must never fail its shard
                results.append(ItemError(errors.STAGE_ERROR, f"{type(error).__name__}: {error}"))
        return results

    return run


# ---------------------------------------------------------------------------------------------
# Fingerprint parameters (unchanged since v1 of each stage: existing datasets keep their fingerprints)


def _mediapipe_id() -> str:
    return f"mediapipe-{importlib.metadata.version('mediapipe')}"  # no import: a no-op run stays quick


def _ingest_params(method: Callable[[PreprocessConfig], str], config: PreprocessConfig, weights: Weights) -> dict:
    return {"fit": method(config), "max_pixels": config.max_pixels, "jpeg": contract.JPEG_QUALITY}


def _pose_params(config: PreprocessConfig, weights: Weights) -> dict:
    model = weights.pose.sha256 if weights.pose else "pose_landmark_full"
    return {"model": f"{_mediapipe_id()}/{model}", "visibility": config.visibility_threshold,
            "torso_visibility": config.torso_visibility_threshold}


def _geometric_params(config: PreprocessConfig, weights: Weights) -> dict:
    return {"parser": f"{parse.GeometricParser.parser_id}:{_mediapipe_id()}"}


def _yolo_params(config: PreprocessConfig, weights: Weights) -> dict:
    return {"parser": f"yolo:{weights.parser.sha256}"}


def _gate_params(config: PreprocessConfig, weights: Weights) -> dict:
    return {"max_torso_tilt_deg": config.max_torso_tilt_deg, "max_other_person_scale": config.max_other_person_scale}


def _agnostic_params(config: PreprocessConfig, weights: Weights) -> dict:
    return {"recipe": config.agnostic_recipe}


def _cloth_mask_params(config: PreprocessConfig, weights: Weights) -> dict:
    return {"model": weights.cloth_mask.sha256 if weights.cloth_mask else cloth_mask.CLASSICAL_MODEL_ID}


def _geometric(config: PreprocessConfig) -> bool:
    return config.parser_backend == "geometric"


def _yolo(config: PreprocessConfig) -> bool:
    return config.parser_backend == "yolo"


# Files a person gets from another item once every item's stages have run (`tasks.engine.paired_cloth`): HR-VITON
# reads a person's paired cloth and its mask under the person's own name (contract §0 item 8, §2.1).
PAIRED_CLOTH_STAGE = "paired_cloth"
PAIRED_CLOTH = (Output(contract.DIR_CLOTH, contract.cloth_image_name),
                Output(contract.DIR_CLOTH_MASK, contract.cloth_mask_name))

PERSON_IMAGE = Output(contract.DIR_IMAGE, contract.person_image_name)
PARSE = Output(contract.DIR_PARSE, contract.parse_name)

STAGES: tuple[Stage, ...] = (
    Stage(
        name="ingest", kind=PERSON, version=1, reads=(),
        outputs=(PERSON_IMAGE,),
        run=per_item(partial(normalize.ingest, person=True)), prepare=pose.prepare_locator,
        encode=normalize.encode_ingested, fields=normalize.ingested_fields, load=normalize.load_ingested,
        loads_from=(0,), params=partial(_ingest_params, lambda config: config.fit),
    ),
    Stage(
        name="pose", kind=PERSON, version=1, reads=("ingest",),
        outputs=(
            Output(contract.DIR_POSE_JSON, contract.keypoints_json_name),
            Output(contract.DIR_POSE_IMG, contract.rendered_pose_name),
            Output("pose", pose.pose_sidecar_name, internal=True),
        ),
        run=per_item(pose.estimate_pose), prepare=pose.prepare_pose, encode=pose.encode_pose, fields=pose.pose_fields,
        load=pose.load_pose, loads_from=(2,), params=_pose_params,
    ),
    Stage(
        name="pose_gate", kind=PERSON, version=1, reads=("pose",),
        outputs=(), run=per_item(pose.gate_pose), encode=lambda seen: (), fields=pose.gate_fields,
        params=_gate_params,
    ),
    Stage(
        name="parse", kind=PERSON, version=1, reads=("ingest", "pose"), active=_geometric,
        outputs=(PARSE,),
        run=per_item(parse.parse_geometric), prepare=parse.prepare_geometric,
        encode=parse.encode_parse, fields=parse.parse_fields,
        load=parse.load_parse, loads_from=(0,), params=_geometric_params,
    ),
    Stage(
        name="parse", kind=PERSON, version=1, reads=("ingest",), active=_yolo,
        outputs=(PARSE,),
        run=parse.parse_yolo_batch, batch_size=lambda config: config.parse_batch_size,
        encode=parse.encode_parse, fields=parse.parse_fields,
        load=parse.load_parse, loads_from=(0,), params=_yolo_params,
    ),
    Stage(
        name="agnostic", kind=PERSON, version=1, reads=("ingest", "pose", "parse"),
        outputs=(
            Output(contract.DIR_PARSE_AGNOSTIC, contract.parse_agnostic_name),
            Output(contract.DIR_AGNOSTIC, contract.agnostic_name),
        ),
        run=per_item(agnostic.make_agnostic), encode=agnostic.encode_agnostic, fields=agnostic.agnostic_fields,
        params=_agnostic_params,
    ),
    Stage(
        name="ingest", kind=GARMENT, version=1, reads=(),
        outputs=(Output(contract.DIR_CLOTH, contract.cloth_image_name),),
        run=per_item(partial(normalize.ingest, person=False)),
        encode=normalize.encode_ingested, fields=normalize.ingested_fields, load=normalize.load_ingested,
        loads_from=(0,), params=partial(_ingest_params, lambda config: "pad"),
    ),
    Stage(
        name="cloth_mask", kind=GARMENT, version=1, reads=("ingest",),
        outputs=(Output(contract.DIR_CLOTH_MASK, contract.cloth_mask_name),),
        run=per_item(cloth_mask.mask_cloth), encode=cloth_mask.encode_mask, fields=cloth_mask.mask_fields,
        params=_cloth_mask_params,
    ),
)

KINDS = (PERSON, GARMENT)


def stages_for(kind: str) -> tuple[str, ...]:
    """The stage names of an item kind, in the order they run (the manifest's stage list)."""
    names: list[str] = []
    for stage in STAGES:
        if stage.kind == kind and stage.name not in names:
            names.append(stage.name)
    return tuple(names)


ALL_STAGES = tuple(dict.fromkeys(name for kind in KINDS for name in stages_for(kind)))


def active_stages(config: PreprocessConfig, kind: str) -> tuple[Stage, ...]:
    """The stages a run with `config` uses for `kind`, one per name, in order."""
    chosen = tuple(stage for stage in STAGES if stage.kind == kind and stage.active(config))
    names = [stage.name for stage in chosen]
    if names != list(stages_for(kind)):
        raise ValueError(f"the registry offers {names} for {kind}s with this configuration, not {stages_for(kind)}")
    return chosen


def output_paths(split: str, kind: str, stem: str) -> list[str]:
    """Every file any stage (any variant) writes for one item."""
    paths: list[str] = []
    for stage in STAGES:
        if stage.kind == kind:
            paths += [path for path in stage.paths(split, stem) if path not in paths]
    return paths


def stage_fingerprints(config: PreprocessConfig, weights: Weights) -> dict[str, dict[str, str]]:
    """kind -> stage -> a short hash of everything besides the input that decides the stage's output."""
    fingerprints: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        for stage in active_stages(config, kind):
            text = json.dumps({"stage": stage.name, "version": stage.version, **stage.params(config, weights)},
                              sort_keys=True)
            fingerprints[kind][stage.name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return fingerprints


def _check(stages: Sequence[Stage]) -> None:
    """Each stage reads only stages declared before it for its kind, and loads only what it writes."""
    for stage in stages:
        earlier = stages_for(stage.kind)[: stages_for(stage.kind).index(stage.name)]
        unknown = [name for name in stage.reads if name not in earlier]
        if unknown:
            raise ValueError(f"{stage.kind} stage {stage.name} reads {unknown}, not declared before it")
        if any(index >= len(stage.outputs) for index in stage.loads_from):
            raise ValueError(f"{stage.kind} stage {stage.name} loads from an output it does not declare")
        for name in stage.reads:
            read = [s for s in stages if s.kind == stage.kind and s.name == name]
            if any(s.load is None for s in read):
                raise ValueError(f"{stage.kind} stage {stage.name} reads {name}, which cannot be loaded back")


_check(STAGES)
