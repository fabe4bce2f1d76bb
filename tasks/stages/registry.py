"""The stage registry: every preprocess stage, declared once.

A stage is pure. Its batch function maps the results of the stages it reads (numpy arrays and plain
data, in memory) to its own result; `encode` turns that result into the bytes of the files it
writes, one per declared `Output`; `load` turns those files back into the result, so that a later
run that reruns only a downstream stage reads what this one wrote, never the source. A result is
what its files decode to (`load(encode(result)) == result`), so a partial rerun sees exactly what a
full run saw.

A stage's module also declares what it needs from the run: its settings (a `Config` mixin: its fields
of `PreprocessConfig`, with their defaults, descriptions and validators), the URL of its weights file
(a function of the configuration) and its fingerprint parameters (a function of the configuration and
its own resolved weights file).

Everything else derives from `STAGES`: `PreprocessConfig` (the run's own fields and every stage's
settings, so the CLI's options and the deployments' parameter schemas), the weights resolved and
hashed once per run, the manifest's stage lists, the planner's dependency rules and fingerprints, the
output paths, the removal of a failed item's outputs (never a file a user put there: `Output.ours`), and
the shard engine's order of work (`tasks.engine.shard`). Adding a stage means writing its module and adding
one entry here (ARCHITECTURE.md, "Adding a stage").
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from tasks.records.catalog import GARMENT, PERSON
from tasks.records.config import Config, RunConfig
from tasks.stages import agnostic, cloth_mask, densepose, normalize, parse, pose
from tasks.stages.model_cache import ModelFile, Weights, cached, resolve_model_file
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
    # Set for a file users may bring their own of (DensePose renders): `ours(data)` says whether a file found
    # at the path is one this stage wrote. No run writes over or removes any other (the shard engine): the
    # stage keeps it, writes nothing and records `model: user-provided`.
    ours: Callable[[bytes], bool] | None = None

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
    # All besides the input that decides the output, from the configuration and the stage's own weights file
    # (None: its bundled default), whose sha256 it must name. tests/test_engine.py pins the fingerprints they
    # make: a change reruns the stage on every existing dataset.
    params: Callable[[PreprocessConfig, ModelFile | None], dict[str, Any]]
    load: Callable[[WorkItem, tuple[bytes, ...]], Any] | None = None  # the result back from its files
    loads_from: tuple[int, ...] = ()  # which of `outputs` `load` reads
    # None: the stage runs per item in the worker processes. Else it runs over batches of this many
    # items in the shard task's process, on its model thread (a model on the GPU).
    batch_size: Callable[[PreprocessConfig], int] | None = None
    active: Callable[[PreprocessConfig], bool] = lambda config: True  # which variant of a stage a run uses
    prepare: Callable[[StageEnv], None] | None = None  # builds the bundled models ahead of the first item
    settings: type[Config] | None = None  # its fields of PreprocessConfig (variants of a stage share them)
    weights: Callable[[PreprocessConfig], str | None] | None = None  # its weights file's URL; None: bundled default
    check_weights: Callable[[PreprocessConfig, ModelFile], None] | None = None  # refuses a file before the run

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


# Files a person gets from another item once every item's stages have run (`tasks.engine.paired_cloth`): HR-VITON
# reads a person's paired cloth and its mask under the person's own name (contract §0 item 8, §2.1).
PAIRED_CLOTH_STAGE = "paired_cloth"
PAIRED_CLOTH = (Output(contract.DIR_CLOTH, contract.cloth_image_name),
                Output(contract.DIR_CLOTH_MASK, contract.cloth_mask_name))

PERSON_IMAGE = Output(contract.DIR_IMAGE, contract.person_image_name)
# HR-VITON opens image-densepose/<the person's file name> (contract §2.1); a user's own render there is kept.
DENSEPOSE = Output(contract.DIR_DENSEPOSE, contract.person_image_name, ours=densepose.is_ours)
PARSE = Output(contract.DIR_PARSE, contract.parse_name)
CLOTH_MASK = Output(contract.DIR_CLOTH_MASK, contract.cloth_mask_name)

STAGES: tuple[Stage, ...] = (
    Stage(
        name="ingest", kind=PERSON, version=1, reads=(), settings=normalize.IngestSettings,
        outputs=(PERSON_IMAGE,),
        run=per_item(partial(normalize.ingest, person=True)), prepare=normalize.prepare_ingest,
        encode=normalize.encode_ingested, fields=normalize.ingested_fields, load=normalize.load_ingested,
        loads_from=(0,), params=partial(normalize.ingest_params, person=True),
    ),
    Stage(
        name="pose", kind=PERSON, version=1, reads=("ingest",), settings=pose.PoseSettings,
        weights=pose.pose_weights_url,
        outputs=(
            Output(contract.DIR_POSE_JSON, contract.keypoints_json_name),
            Output(contract.DIR_POSE_IMG, contract.rendered_pose_name),
            Output("pose", pose.pose_sidecar_name, internal=True),
        ),
        run=per_item(pose.estimate_pose), prepare=pose.prepare_pose, encode=pose.encode_pose, fields=pose.pose_fields,
        load=pose.load_pose, loads_from=(2,), params=pose.pose_params,
    ),
    Stage(
        name="pose_gate", kind=PERSON, version=1, reads=("pose",), settings=pose.PoseGateSettings,
        outputs=(), run=per_item(pose.gate_pose), encode=lambda seen: (), fields=pose.gate_fields,
        params=pose.gate_params,
    ),
    Stage(
        name="parse", kind=PERSON, version=1, reads=("ingest", "pose"), active=parse.is_geometric,
        settings=parse.ParseSettings,
        outputs=(PARSE,),
        run=per_item(parse.parse_geometric), prepare=parse.prepare_geometric,
        encode=parse.encode_parse, fields=parse.parse_fields,
        load=parse.load_parse, loads_from=(0,), params=parse.geometric_params,
    ),
    Stage(
        name="parse", kind=PERSON, version=1, reads=("ingest",), active=parse.is_yolo,
        settings=parse.ParseSettings, weights=parse.yolo_weights_url, check_weights=parse.check_yolo_weights,
        outputs=(PARSE,),
        run=parse.parse_yolo_batch, batch_size=parse.yolo_batch_size,
        encode=parse.encode_parse, fields=parse.parse_fields,
        load=parse.load_parse, loads_from=(0,), params=parse.yolo_params,
    ),
    Stage(
        name="agnostic", kind=PERSON, version=1, reads=("ingest", "pose", "parse"), settings=agnostic.AgnosticSettings,
        outputs=(
            Output(contract.DIR_PARSE_AGNOSTIC, contract.parse_agnostic_name),
            Output(contract.DIR_AGNOSTIC, contract.agnostic_name),
        ),
        run=per_item(agnostic.make_agnostic), encode=agnostic.encode_agnostic, fields=agnostic.agnostic_fields,
        params=agnostic.agnostic_params,
    ),
    Stage(
        name="densepose", kind=PERSON, version=1, reads=("ingest", "pose", "parse"), active=densepose.is_geometric,
        settings=densepose.DensePoseSettings,
        outputs=(DENSEPOSE,),
        run=per_item(densepose.make_densepose), encode=densepose.encode_densepose, fields=densepose.densepose_fields,
        params=densepose.geometric_params,
    ),
    Stage(  # writes nothing; runs when the geometric one would, so a render of ours from before is removed
        name="densepose", kind=PERSON, version=1, reads=("ingest", "pose", "parse"), active=densepose.is_none,
        settings=densepose.DensePoseSettings,
        outputs=(),
        run=per_item(densepose.skip_densepose), encode=lambda value: (), fields=densepose.none_fields,
        params=densepose.none_params,
    ),
    Stage(
        name="ingest", kind=GARMENT, version=1, reads=(), settings=normalize.IngestSettings,
        outputs=(Output(contract.DIR_CLOTH, contract.cloth_image_name),),
        run=per_item(partial(normalize.ingest, person=False)),
        encode=normalize.encode_ingested, fields=normalize.ingested_fields, load=normalize.load_ingested,
        loads_from=(0,), params=partial(normalize.ingest_params, person=False),
    ),
    Stage(
        name="cloth_mask", kind=GARMENT, version=1, reads=("ingest",), active=cloth_mask.is_classical,
        settings=cloth_mask.ClothMaskSettings, weights=cloth_mask.mask_weights_url,
        outputs=(CLOTH_MASK,),
        run=per_item(cloth_mask.mask_cloth), encode=cloth_mask.encode_mask, fields=cloth_mask.mask_fields,
        params=cloth_mask.mask_params,
    ),
    Stage(  # the same fingerprint: switching between the variants reruns nothing
        name="cloth_mask", kind=GARMENT, version=1, reads=("ingest",), active=cloth_mask.is_unet,
        settings=cloth_mask.ClothMaskSettings, weights=cloth_mask.mask_weights_url,
        outputs=(CLOTH_MASK,),
        run=cloth_mask.mask_cloth_batch, batch_size=lambda config: config.cloth_mask_batch_size,
        encode=cloth_mask.encode_mask, fields=cloth_mask.mask_fields, params=cloth_mask.mask_params,
    ),
)


def settings_of(stages: Sequence[Stage]) -> tuple[type[Config], ...]:
    """Each stage's settings once, in the registry's order."""
    return tuple(dict.fromkeys(stage.settings for stage in stages if stage.settings is not None))


# The flows' parameter and the CLI's options. pydantic orders the fields from the last base to the first: the
# run's own, then each stage's in the registry's order.
class PreprocessConfig(*reversed(settings_of(STAGES)), RunConfig):
    """Everything a preprocess run needs. Defaults run offline on the bundled models."""


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


def outputs_of(split: str, kind: str, stem: str, names: Iterable[str] | None = None) -> dict[str, Output]:
    """Every file any variant of the named stages (None: every stage) writes for one item: path -> its Output."""
    wanted = None if names is None else set(names)
    found: dict[str, Output] = {}
    for stage in STAGES:
        if stage.kind == kind and (wanted is None or stage.name in wanted):
            for output in stage.outputs:
                found.setdefault(output.path(split, stem), output)
    return found


def resolve_weights(config: PreprocessConfig) -> Weights:
    """The weights file of every stage the run uses that names one, local, with its sha256 (one download and one
    hash each): stage name -> file. The flow resolves them once per run; every shard gets the result."""
    files: dict[str, ModelFile] = {}
    for kind in KINDS:
        for entry in active_stages(config, kind):
            url = entry.weights(config) if entry.weights else None
            if url and entry.name not in files:
                files[entry.name] = resolve_model_file(url, config.storage_options)
    return Weights(files)


def check_weights(config: PreprocessConfig, weights: Weights) -> None:
    """Each stage's check of its weights file (a YOLO checkpoint that would run code when loaded): raises before
    the run processes anything."""
    for kind in KINDS:
        for entry in active_stages(config, kind):
            file = weights.of(entry.name)
            if entry.check_weights is not None and file is not None:
                entry.check_weights(config, file)


def stage_fingerprints(config: PreprocessConfig, weights: Weights) -> dict[str, dict[str, str]]:
    """kind -> stage -> a short hash of everything besides the input that decides the stage's output."""
    fingerprints: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        for entry in active_stages(config, kind):
            file = weights.of(entry.name)
            text = json.dumps({"stage": entry.name, "version": entry.version, **entry.params(config, file)},
                              sort_keys=True)
            if file is not None and file.sha256 not in text:
                raise ValueError(f"{kind} stage {entry.name}: its fingerprint parameters do not name its weights' "
                                 "sha256, so new weights would not rerun it")
            fingerprints[kind][entry.name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return fingerprints


def _check(stages: Sequence[Stage]) -> None:
    """Each stage reads only stages declared before it for its kind, and loads only what it writes; no two
    stages' settings (nor a stage's and the run's) declare the same field."""
    owners = dict.fromkeys(RunConfig.model_fields, "the run")
    for settings in settings_of(stages):
        for name in settings.model_fields:
            if name in owners:
                raise ValueError(f"{settings.__name__} declares {name}, a field of {owners[name]} too")
            owners[name] = settings.__name__
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
            if any(output.ours is not None for s in read for output in s.outputs):
                raise ValueError(f"{stage.kind} stage {stage.name} reads {name}, whose files may be a user's")


_check(STAGES)
