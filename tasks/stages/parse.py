"""Human parsing: CIHP label maps (contract §1.3), their PNG format, and the choice of backend.

Two backends, both returning an (H, W) uint8 map of CIHP ids 0..19:

- `GeometricParser` (`tasks.stages.parse_geometric`, the default, ``parser_id = "geometric-v3"``):
  approximate, built from MediaPipe's own outputs; needs no weights.
- `YoloParser` (`tasks.stages.parse_yolo`): a YOLOv8-seg model whose classes map to CIHP ids.

`encode_parse_png` / `decode_parse_png` read and write the `image-parse-v3/<stem>.png` format:
P mode, raw indices 0..19, the CIHP palette (contract §0 item 4, §1.3).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from tasks.records.config import Config
from tasks.stages.model_cache import ModelFile
from tasks.stages.parse_geometric import GeometricParser
from tasks.stages.parse_yolo import (  # noqa: F401  (the stage's public names)
    DEFAULT_YOLO_CLASS_TO_CIHP,
    YOLO_CLASS_NAMES,
    YoloParser,
    check_weights,
    yolo_parser_id,
)
from tasks.stages.pose import mediapipe_id
from vitonhd_models.contract import cihp_palette_flat
from vitonhd_models.parse_maps import check_label_range, decode_parse_png

# ---------------------------------------------------------------------------------------------
# PNG encoding (contract §1.3: P mode, indices 0..19, the colours are only a palette)
# ---------------------------------------------------------------------------------------------


def encode_parse_png(labels: np.ndarray) -> bytes:
    """Encode an (H, W) map of CIHP ids as a P-mode PNG carrying the CIHP palette."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a parse map is (H, W); got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"a parse map holds integer label ids; got dtype {labels.dtype}")
    check_label_range(labels, "parse map")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(cihp_palette_flat())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# The parse stage (declared in tasks/stages/registry.py): geometric per item, YOLO over batches
# ---------------------------------------------------------------------------------------------------

DEFAULT_PARSE_BATCH_SIZE = 8  # images per YOLO call: most of a GPU's throughput at a few GB of memory


class ParseSettings(Config):
    """The parse stage's fields of `PreprocessConfig`: which backend, and the YOLO one's batches and trust."""

    parser: str = Field("geometric", description="'geometric' (bundled, approximate) or 'yolo:{weights URL}'")
    parse_batch_size: int = Field(DEFAULT_PARSE_BATCH_SIZE, ge=1, description="Images per YOLO parser call")
    trust_weights: bool = Field(
        False, description="Load the YOLO parser's .pt weights as Ultralytics does, code in them included (trusted files only)"
    )

    @field_validator("parser")
    @classmethod
    def _parser_spec(cls, value: str) -> str:
        if value == "geometric" or (value.startswith("yolo:") and len(value) > len("yolo:")):
            return value
        raise ValueError("parser must be 'geometric' or 'yolo:<weights URL>'")

    @property
    def parser_backend(self) -> str:
        return self.parser.split(":", 1)[0]

    @property
    def parser_weights_url(self) -> str | None:
        return self.parser.split(":", 1)[1] if self.parser.startswith("yolo:") else None


def is_geometric(config) -> bool:
    return config.parser_backend == "geometric"


def is_yolo(config) -> bool:
    return config.parser_backend == "yolo"


def yolo_weights_url(config) -> str | None:
    return config.parser_weights_url


def yolo_batch_size(config) -> int:
    return config.parse_batch_size


def geometric_params(config, weights: ModelFile | None) -> dict:
    return {"parser": f"{GeometricParser.parser_id}:{mediapipe_id()}"}


def yolo_params(config, weights: ModelFile | None) -> dict:
    return {"parser": f"yolo:{weights.sha256}"}


def check_yolo_weights(config, weights: ModelFile) -> None:
    """A YOLO checkpoint that would run code when loaded stops the run before anything is processed."""
    check_weights(weights.path, config.trust_weights)



def _geometric_parser(env) -> GeometricParser:
    return env.model(("geometric",), GeometricParser)


def prepare_geometric(env) -> None:
    _geometric_parser(env).prepare()


def parse_geometric(env, item) -> np.ndarray:
    return _geometric_parser(env).parse(item.values["ingest"].image, item.values["pose"])


def _yolo_parser(env) -> YoloParser:
    weights = env.weights.of("parse")
    trust = env.config.trust_weights
    return env.model(("yolo", weights.sha256, trust), lambda: YoloParser(weights.path, sha256=weights.sha256, trust=trust))


def parse_yolo_batch(env, batch) -> list[np.ndarray]:
    """One batched YOLO predict over the batch's images (the engine sizes batches by parse_batch_size)."""
    return _yolo_parser(env).parse_batch([item.values["ingest"].image for item in batch])


def encode_parse(labels: np.ndarray) -> tuple[bytes, ...]:
    return (encode_parse_png(labels),)


def parse_fields(env, labels: np.ndarray) -> dict:
    weights = env.weights.of("parse")
    if weights is None:
        return {"model": GeometricParser.parser_id}
    return {"model": yolo_parser_id(weights.path, weights.sha256)}


def load_parse(work, files: tuple[bytes, ...]) -> np.ndarray:
    return decode_parse_png(files[0])
