"""The densepose stage (declared in tasks/stages/registry.py): HR-VITON's `image-densepose/<person>.jpg`.

The dataset's file is DensePose's part index I (1..24, `vitonhd_models.contract.DensePosePart`) drawn with
OpenCV's COLORMAP_PARULA of `I * 255 / 24` (as uint8), black where there is no body, at full opacity:
detectron2's `apply_net.py show ... dp_segm` with alpha 1 on a black canvas (measured on the dataset's own
files; `DENSEPOSE_COLOUR_SCALE`). Ours draws the same colours; the parts come from the pose's landmarks and
the parse (`tasks.stages.densepose_geometric`), no DensePose model.

A user may bring their own renders (detectron2's) in `image-densepose/`: every file we write is signed
(`image_codec.sign_jpeg`), and the engine never writes over or removes one that is not ours (the registry's
`Output.ours`). `none` writes nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from tasks.records.config import Config
from tasks.stages.densepose_geometric import PARSER_ID, densepose_parts
from tasks.stages.image_codec import encode_jpeg, sign_jpeg, signed_by
from tasks.stages.model_cache import ModelFile
from vitonhd_models.contract import DENSEPOSE_COLOUR_SCALE, DENSEPOSE_NUM_PARTS, JPEG_QUALITY

STAGE = "densepose"  # the signature in our files names the stage, not the method: a new method rewrites them
NONE = "none"


class DensePoseSettings(Config):
    """The densepose stage's fields of `PreprocessConfig`."""

    densepose: Literal["geometric", "none"] = Field(
        "geometric",
        description="HR-VITON's image-densepose/{person}.jpg, DensePose's 24 body parts in the dataset's colours: "
        "'geometric' draws them from the pose and the parse (no DensePose model); 'none' writes nothing, and "
        "`vitonprep validate --target hrviton` says what to add. A render there we did not write (detectron2's) "
        "is never overwritten",
    )


def is_geometric(config) -> bool:
    return config.densepose == "geometric"


def is_none(config) -> bool:
    return config.densepose == NONE


def geometric_params(config, weights: ModelFile | None) -> dict:
    return {"method": PARSER_ID}


def none_params(config, weights: ModelFile | None) -> dict:
    return {"method": NONE}


# ---------------------------------------------------------------------------------------------------
# The colours (the dataset's rendering rule) and their inverse
# ---------------------------------------------------------------------------------------------------


@cache
def palette() -> np.ndarray:
    """(25, 3) uint8 RGB: the colour of each part index, black for 0 (no body)."""
    levels = (np.arange(DENSEPOSE_NUM_PARTS + 1) * DENSEPOSE_COLOUR_SCALE).astype(np.uint8)
    colours = cv2.applyColorMap(levels.reshape(-1, 1), cv2.COLORMAP_PARULA)[:, 0, ::-1].copy()  # BGR -> RGB
    colours[0] = 0
    colours.setflags(write=False)
    return colours


def render_densepose(parts: np.ndarray) -> np.ndarray:
    """(H, W) part indices 0..24 -> (H, W, 3) uint8 RGB: COLORMAP_PARULA of `parts * 255 / 24`, black at 0."""
    parts = np.asarray(parts)
    if parts.ndim != 2 or parts.size and int(parts.max()) > DENSEPOSE_NUM_PARTS:
        raise ValueError(f"DensePose parts are an (H, W) map of 0..{DENSEPOSE_NUM_PARTS}; got shape {parts.shape}")
    table = np.zeros((256, 1, 3), np.uint8)
    table[: DENSEPOSE_NUM_PARTS + 1, 0] = palette()
    indices = np.ascontiguousarray(parts, dtype=np.uint8)
    return cv2.LUT(cv2.merge([indices, indices, indices]), table)  # a table lookup: 8x faster than indexing


def decode_densepose(image_rgb: np.ndarray) -> np.ndarray:
    """A render (ours or the dataset's, as decoded from its JPEG) back to (H, W) uint8 part indices: each pixel's
    nearest of the 25 colours (black: 0)."""
    colours = palette().astype(np.int32)
    pixels = np.asarray(image_rgb, dtype=np.int32).reshape(-1, 1, 3)
    distance = np.zeros((pixels.shape[0], len(colours)), np.int32)
    for channel in range(3):  # per channel: (N, 25) int32, never (N, 25, 3)
        distance += (pixels[:, :, channel] - colours[None, :, channel]) ** 2
    return distance.argmin(axis=1).astype(np.uint8).reshape(np.shape(image_rgb)[:2])


# ---------------------------------------------------------------------------------------------------
# The stage's functions
# ---------------------------------------------------------------------------------------------------


def make_densepose(env, item) -> np.ndarray:
    """One person's (H, W) part indices, from the ingested image, the pose's landmarks and the parse."""
    return densepose_parts(item.values["ingest"].image, item.values["pose"].landmarks_px, item.values["parse"])


def encode_densepose(parts: np.ndarray) -> tuple[bytes, ...]:
    return (sign_jpeg(encode_jpeg(render_densepose(parts), quality=JPEG_QUALITY), STAGE),)


def is_ours(data: bytes) -> bool:
    """Whether a file found at a densepose path is one this stage wrote (anything else is the user's)."""
    return signed_by(data, STAGE)


def densepose_fields(env, parts: np.ndarray) -> dict:
    return {"model": PARSER_ID}


def skip_densepose(env, item) -> None:
    """`--densepose none`: nothing to make."""
    return None


def none_fields(env, value: None) -> dict:
    return {"model": NONE}
