"""The agnostic stage (declared in tasks/stages/registry.py): the algorithms of `vitonhd_models.agnostic` on one
person's parse map, keypoints and image, encoded as the dataset's files."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from tasks.records.config import Config
from tasks.stages.image_codec import encode_jpeg
from tasks.stages.model_cache import ModelFile
from tasks.stages.parse import encode_parse_png
from vitonhd_models.agnostic import image_agnostic, parse_agnostic
from vitonhd_models.contract import JPEG_QUALITY


class AgnosticSettings(Config):
    """The agnostic stage's fields of `PreprocessConfig`."""

    agnostic_recipe: Literal["hrviton", "vitonhd"] = Field(
        "hrviton", description="Clothing-agnostic image recipe: HR-VITON get_agnostic or VITON-HD get_img_agnostic"
    )


def agnostic_params(config, weights: ModelFile | None) -> dict:
    return {"recipe": config.agnostic_recipe}


def make_agnostic(env, item) -> tuple[np.ndarray, np.ndarray]:
    """The parse-agnostic map and the clothing-agnostic image of one person."""
    labels = item.values["parse"]
    keypoints = item.values["pose"].keypoints_body25
    image = item.values["ingest"].image
    return (parse_agnostic(labels, keypoints),
            image_agnostic(image, labels, keypoints, recipe=env.config.agnostic_recipe))


def encode_agnostic(value: tuple[np.ndarray, np.ndarray]) -> tuple[bytes, ...]:
    parse_free, image_free = value
    return encode_parse_png(parse_free), encode_jpeg(image_free, quality=JPEG_QUALITY)


def agnostic_fields(env, value) -> dict:
    return {"model": env.config.agnostic_recipe}
