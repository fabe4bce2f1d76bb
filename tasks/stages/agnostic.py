"""The agnostic stage (declared in tasks/stages/registry.py): the algorithms of `vitonhd_models.agnostic` on one
person's parse map, keypoints and image, encoded as the dataset's files."""

from __future__ import annotations

import numpy as np

from vitonhd_models.agnostic import image_agnostic, parse_agnostic
from vitonhd_models.contract import JPEG_QUALITY


def make_agnostic(env, item) -> tuple[np.ndarray, np.ndarray]:
    """The parse-agnostic map and the clothing-agnostic image of one person."""
    labels = item.values["parse"]
    keypoints = item.values["pose"].keypoints_body25
    image = item.values["ingest"].image
    return (parse_agnostic(labels, keypoints),
            image_agnostic(image, labels, keypoints, recipe=env.config.agnostic_recipe))


def encode_agnostic(value: tuple[np.ndarray, np.ndarray]) -> tuple[bytes, ...]:
    from tasks.stages.normalize import encode_jpeg
    from tasks.stages.parse import encode_parse_png

    parse_free, image_free = value
    return encode_parse_png(parse_free), encode_jpeg(image_free, quality=JPEG_QUALITY)


def agnostic_fields(env, value) -> dict:
    return {"model": env.config.agnostic_recipe}
