"""CIHP label maps as the loaders read them (contract §1.3): a single-channel image (P with a palette, or
L) whose values are the label ids 0..19. The one decoder every reader of parse maps uses."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vitonhd_models.contract import CIHP_NUM_LABELS


class LabelMapError(ValueError):
    """Not a CIHP label map: an RGB visualisation, another mode, or ids outside 0..19."""


def check_label_range(labels: np.ndarray, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= CIHP_NUM_LABELS):
        bad = sorted({int(v) for v in np.unique(labels) if v < 0 or v >= CIHP_NUM_LABELS})
        raise LabelMapError(
            f"{what} holds label values {bad[:10]} outside 0..{CIHP_NUM_LABELS - 1} "
            "(CIHP ids; VITON-HD's one-hot scatter_ raises on any value >= 20)"
        )


def label_ids(image: Image.Image, what: str = "parse map") -> np.ndarray:
    """The (H, W) uint8 ids of a P or L image; LabelMapError for any other mode or an id above 19."""
    if image.mode not in ("P", "L"):
        raise LabelMapError(
            f"{what} must be single-channel (P with a palette, or L) holding label ids 0..19; "
            f"got mode {image.mode!r}: an RGB visualisation has lost the ids (contract §0 item 4)"
        )
    labels = np.array(image)
    check_label_range(labels, what)
    return labels.astype(np.uint8, copy=False)


def decode_parse_png(data: bytes, what: str = "parse PNG") -> np.ndarray:
    """A parse PNG's (H, W) uint8 label ids (see `label_ids`)."""
    with Image.open(io.BytesIO(data)) as image:
        return label_ids(image, what)
