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

from tasks.stages.parse_geometric import GeometricParser
from tasks.stages.parse_yolo import (  # noqa: F401  (the stage's public names)
    DEFAULT_YOLO_CLASS_TO_CIHP,
    YOLO_CLASS_NAMES,
    YoloParser,
    yolo_parser_id,
)
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


def _geometric_parser(env) -> GeometricParser:
    return env.model(("geometric",), GeometricParser)


def prepare_geometric(env) -> None:
    _geometric_parser(env).prepare()


def parse_geometric(env, item) -> np.ndarray:
    return _geometric_parser(env).parse(item.values["ingest"].image, item.values["pose"])


def _yolo_parser(env) -> YoloParser:
    weights = env.weights.parser
    trust = env.config.trust_weights
    return env.model(("yolo", weights.sha256, trust), lambda: YoloParser(weights.path, sha256=weights.sha256, trust=trust))


def parse_yolo_batch(env, batch) -> list[np.ndarray]:
    """One batched YOLO predict over the batch's images (the engine sizes batches by parse_batch_size)."""
    return _yolo_parser(env).parse_batch([item.values["ingest"].image for item in batch])


def encode_parse(labels: np.ndarray) -> tuple[bytes, ...]:
    return (encode_parse_png(labels),)


def parse_fields(env, labels: np.ndarray) -> dict:
    weights = env.weights.parser
    if weights is None:
        return {"model": GeometricParser.parser_id}
    return {"model": yolo_parser_id(weights.path, weights.sha256)}


def load_parse(work, files: tuple[bytes, ...]) -> np.ndarray:
    return decode_parse_png(files[0])
