"""Typed configuration of a preprocess run, validated once at the edge (CLI, flow parameters)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from vitonhd_models.pairs import pair_name

if TYPE_CHECKING:
    from tasks.records.catalog import CatalogItem
from tasks.infra.options import CREDENTIAL_NAME, credential_options

CREDENTIALS_HELP = (
    "storage_options must not carry credentials ({names}): Prefect keeps flow parameters in its database "
    "and shows them in the UI. Give them to the machines that run the flows instead: the environment "
    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or fsspec's FSSPEC_S3_KEY and "
    "FSSPEC_S3_SECRET), an AWS profile (the option profile=<name>, or AWS_PROFILE), an fsspec configuration "
    "file, or a Prefect Secret block named by storage_secret_block"
)


def _without_credentials(options: dict[str, Any]) -> dict[str, Any]:
    names = credential_options(options)
    if names:
        raise ValueError(CREDENTIALS_HELP.format(names=", ".join(names)))
    return options


def _no_credentials_schema(depth: int) -> dict[str, Any]:
    """JSON schema of an options object whose names (to `depth` levels down) are not credential-shaped:
    a Prefect server enforcing a deployment's parameter schema refuses such a run before storing it."""
    schema: dict[str, Any] = {"type": "object", "propertyNames": {"not": {"pattern": CREDENTIAL_NAME.pattern}}}
    if depth:
        schema["additionalProperties"] = {"anyOf": [_no_credentials_schema(depth - 1), {"not": {"type": "object"}}]}
    return schema


# fsspec options for every URL (endpoint_url, profile, client_kwargs, ...), never credentials.
StorageOptions = Annotated[
    dict[str, Any],
    AfterValidator(_without_credentials),
    WithJsonSchema({**_no_credentials_schema(4), "description": "fsspec options for every URL; no credentials"}),
    Field(description="fsspec options for every URL (endpoint_url, profile, client_kwargs, ...); no credentials"),
]
# Loaded where the run runs (`tasks.infra.runtime.use_storage_secret`), never a parameter itself.
SecretBlockName = Annotated[
    str | None,
    Field(description="Name of a Prefect Secret block with the storage credentials (a JSON object: key, secret, ...)"),
]

Device = Annotated[Literal["auto", "cpu", "cuda"], Field(description="'auto': CUDA when there is one")]


class Config(BaseModel):
    """A configuration: validated once at the edge, immutable, no unknown fields, and no input echoed in
    its errors (a refused value may be a credential)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


DEFAULT_SHARD_SIZE = 64
DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000; bigger headers are treated as decompression bombs
DEFAULT_MAX_SOURCE_BYTES = 64 * 2**20  # a real catalog photo is a few MB; a 64 MB one is not read


class RunConfig(Config):
    """The fields of a preprocess run that are no one stage's: where, which split, how the work is cut.

    `tasks.stages.registry.PreprocessConfig`, the flows' parameter, is this model with the settings of
    every registered stage (each stage declares its fields, defaults and descriptions in its own module).
    """

    catalog: str = Field(description="Catalog root URL: persons/ + garments/ (+ pairs.csv), or image/ + cloth/")
    out: str = Field(description="Dataset root URL; outputs go under {out}/{split}/")
    split: Literal["test", "train"] = Field("test", description="Dataset split to write")
    shard_size: int = Field(DEFAULT_SHARD_SIZE, ge=1, description="Images per task run")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Larger images are rejected as bombs")
    max_source_bytes: int = Field(
        DEFAULT_MAX_SOURCE_BYTES, ge=1, description="Larger source files are rejected without being read"
    )
    workers: int | None = Field(
        None, ge=0, description="Worker processes for the CPU stages; None = one per core, 0 = in the task's own process"
    )
    lease_wait_s: float = Field(
        0.0, ge=0.0, description="How long to wait for another run on the same dataset to finish (0: stop at once)"
    )
    storage_options: StorageOptions = Field(default_factory=dict)
    storage_secret_block: SecretBlockName = None


class Selection(Config):
    """Which catalog items a run looks at (a backfill): a key prefix and a modification-time range."""

    prefix: str = Field("", description="Only catalog keys under this prefix, relative to the catalog root "
                        "(e.g. garments/2026-11/)")
    since: datetime | None = Field(None, description="Only sources modified at or after this time (no zone: UTC)")
    until: datetime | None = Field(None, description="Only sources modified before this time (no zone: UTC)")
    full_refresh: bool = Field(
        False, description="Ignore what the dataset already holds: rerun every stage of the selected items"
    )

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)

    def selects(self, item: CatalogItem) -> bool:
        if not item.rel.startswith(self.prefix):
            return False
        if self.since is None and self.until is None:
            return True
        if item.modified is None:
            return False
        return ((self.since is None or item.modified >= self.since.timestamp())
                and (self.until is None or item.modified < self.until.timestamp()))


# A child run of 2,000 items is ~160 task runs at 64 images per shard (Prefect is comfortable up to a
# few thousand per flow run) and roughly half an hour of one GPU machine: a unit worth a process start.
DEFAULT_ITEMS_PER_CHILD_RUN = 2000
DEFAULT_MAX_FAILED_FRACTION = 0.1


class RunPolicy(Config):
    """How a preprocess run behaves as part of the service: failure threshold, fan-out and chaining."""

    max_failed_fraction: float = Field(
        DEFAULT_MAX_FAILED_FRACTION, ge=0.0, le=1.0,
        description="The run ends Failed when more than this share of the items it processed failed",
    )
    items_per_child_run: int = Field(
        DEFAULT_ITEMS_PER_CHILD_RUN, ge=0,
        description="A deployment run planning more items splits them into child runs of preprocess/shard-range "
        "of at most this many items (0: never split)",
    )
    tryon_deployment: str | None = Field(
        None, description="Deployment to start for the garments this run added or changed, e.g. tryon/bulk"
    )
    tryon_persons: list[str] | None = Field(
        None, description="The person roster those garments are rendered on; None = every person in the dataset"
    )
    train_deployment: str | None = Field(
        None, description="Deployment to start once enough new pairs arrived since it was last started, e.g. train/train"
    )
    train_min_new_pairs: int = Field(1000, ge=1, description="New pairs that start the train deployment")

    @field_validator("tryon_deployment", "train_deployment")
    @classmethod
    def _deployment_name(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        flow_name, sep, deployment = value.partition("/")
        if not sep or not flow_name or not deployment or "/" in deployment:
            raise ValueError(f"a deployment is named <flow>/<deployment>, got {value!r}")
        return value


class TrainConfig(Config):
    """One VITON-HD training stage. Defaults: the official architecture at 1024x768, offline."""

    dataset: str = Field(description="Dataset root URL (holds {split}/ and {split}_pairs.txt)")
    stage: Literal["seg", "gmm", "alias"] = Field(description="Which network to train")
    out: str = Field(description="Output URL: checkpoints, metrics, samples and {stage}_final.pth")
    split: str = Field("train", description="Split to train on; its pairs file must pair persons with their own garment")
    steps: int = Field(1000, ge=1, description="Total optimiser steps (a rerun continues up to this)")
    batch_size: int = Field(4, ge=1, description="Pairs per step")
    lr_g: float | None = Field(None, gt=0, description="Generator learning rate; None = the stage default")
    lr_d: float | None = Field(None, gt=0, description="Discriminator learning rate; None = the stage default")
    checkpoint_every: int = Field(500, ge=1, description="Steps between checkpoints (and sample grids)")
    log_every: int = Field(1, ge=1, description="Steps between loss lines in the run log (Parquet gets every step)")
    seed: int = Field(0, ge=0, description="Seeds initialisation, data order and the noise of every step")
    load_height: int = Field(1024, ge=64, description="Training resolution (the dataset files stay 1024x768)")
    load_width: int = Field(768, ge=48, description="Training resolution, width")
    seg_ngf: int = Field(64, ge=1, description="Width of the seg U-Net (64 = official)")
    gmm_ngf: int = Field(64, ge=1, description="Width of the GMM feature extractors (64 = official)")
    alias_ngf: int = Field(64, ge=1, description="Width of the ALIAS generator (64 = official)")
    alias_norm_hidden: int = Field(128, ge=1, description="ALIASNorm hidden width (128 = official)")
    num_upsampling_layers: Literal["normal", "more", "most"] = Field(
        "most", description="ALIAS depth: normal, more or most (official)"
    )
    ndf: int = Field(64, ge=1, description="Discriminator width")
    lambda_ce: float = Field(10.0, ge=0, description="seg: weight of the cross-entropy term")
    lambda_const: float = Field(0.04, ge=0, description="gmm: weight of the TPS second-order constraint")
    lambda_fm: float = Field(10.0, ge=0, description="alias: weight of the feature-matching term")
    lambda_vgg: float = Field(10.0, ge=0, description="alias: weight of the perceptual term")
    vgg_weights: str | None = Field(None, description="URL of torchvision VGG19 weights; None = perceptual loss off")
    gmm_checkpoints: str | None = Field(
        None, description="alias stage: folder with gmm_final.pth for the warped cloth; None = {out}"
    )
    lpips_alexnet_weights: str | None = Field(None, description="URL of torchvision AlexNet weights (LPIPS)")
    lpips_lin_weights: str | None = Field(None, description="URL of the LPIPS v0.1 alex linear weights")
    fid_inception_weights: str | None = Field(None, description="URL of torchvision Inception v3 weights (FID)")
    holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Pairs held out for evaluation")
    eval_split: str | None = Field(None, description="Evaluate on this split's pairs (paired) instead of held-out pairs")
    agnostic: Literal["vitonhd", "hrviton", "disk"] = Field(
        "vitonhd", description="Clothing-agnostic image: computed online (recipe) or read from agnostic-v3.2/"
    )
    device: Device = "auto"
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    cache_samples: bool = Field(False, description="Keep decoded samples in memory (small datasets)")
    storage_options: StorageOptions = Field(default_factory=dict)
    storage_secret_block: SecretBlockName = None


class ParserTrainConfig(Config):
    """Train the YOLOv8-seg human parser on a `vitonprep parser-dataset` folder. Defaults: offline, the x model."""

    data: str = Field(description="Folder URL of a parser dataset (data.yaml, images/, labels/)")
    out: str = Field(description="Output URL: weights/best.pt, results.csv, curves.png, model card, evaluation")
    model: str = Field(
        "yolov8x-seg.yaml",
        description="An Ultralytics architecture file (trains from scratch) or the URL of .pt weights to fine-tune",
    )
    epochs: int = Field(100, ge=1, description="Training epochs (a rerun resumes up to this)")
    imgsz: int = Field(1024, ge=32, description="Training and evaluation image size (pixels, long side)")
    batch: int = Field(8, ge=1, description="Images per batch")
    device: Device = "auto"
    workers: int = Field(2, ge=0, description="DataLoader worker processes")
    patience: int = Field(50, ge=1, description="Epochs without improvement before stopping early")
    seed: int = Field(0, ge=0, description="Training seed")
    compare_geometric: bool = Field(
        True, description="Also evaluate the bundled geometric parser on the val split (pixel IoU)"
    )
    trust_weights: bool = Field(
        False, description="Load .pt checkpoints (fine-tune weights, last.pt) as Ultralytics does, code in them included"
    )
    storage_options: StorageOptions = Field(default_factory=dict)
    storage_secret_block: SecretBlockName = None


class TryOnConfig(Config):
    """Everything a try-on run needs, validated once at the edge (CLI, flow parameters)."""

    dataset: str = Field(description="Dataset root URL: {split}/ and {split}_pairs.txt (ours or VITON-HD's layout)")
    out: str = Field(description="Output root URL: results/, manifests/tryon/, the contact sheet")
    split: str = Field("test", min_length=1, pattern=r"^[^/\s]+$", description="Dataset split to read")
    pairs: str | None = Field(None, description="URL of a pairs file; default {dataset}/{split}_pairs.txt")
    persons: list[str] | None = Field(None, description="Person stems or names; with garments: their cross product")
    garments: list[str] | None = Field(None, description="Garment stems or names; with persons: their cross product")
    checkpoints: str | None = Field(
        None, description="Folder URL with seg/gmm/alias_final.pth; missing files leave networks randomly initialised"
    )
    batch_size: int = Field(4, ge=1, description="Pairs per forward pass")
    shard_size: int = Field(32, ge=1, description="Pairs per task run")
    device: Device = "auto"
    precision: Literal["fp32", "fp16"] = Field("fp32", description="fp16 runs seg and ALIAS under autocast (CUDA only)")
    seed: int = Field(0, ge=0, description="Seeds random init and the seg/ALIAS noise (per batch: seed + index)")
    agnostic: Literal["vitonhd", "hrviton", "disk"] = Field(
        "vitonhd", description="Clothing-agnostic image: VITON-HD's online recipe (what its checkpoints saw), "
        "HR-VITON's, or agnostic-v3.2/ from disk"
    )
    storage_options: StorageOptions = Field(default_factory=dict)
    storage_secret_block: SecretBlockName = None

    @field_validator("persons", "garments")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [pair_name(name) for name in value]
        if not names:
            raise ValueError("give at least one name")
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _one_source(self) -> TryOnConfig:
        if (self.persons is None) != (self.garments is None):
            raise ValueError("persons and garments go together (their cross product is rendered)")
        if self.persons is not None and self.pairs is not None:
            raise ValueError("give either a pairs file or persons and garments, not both")
        return self
