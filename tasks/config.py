"""Typed configuration of a preprocess run, validated once at the edge (CLI, flow parameters)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_SHARD_SIZE = 64
DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000; bigger headers are treated as decompression bombs


class PreprocessConfig(BaseModel):
    """Everything a preprocess run needs. Defaults run offline on the bundled models."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    catalog: str = Field(description="Catalog root URL: persons/ + garments/ (+ pairs.csv), or image/ + cloth/")
    out: str = Field(description="Dataset root URL; outputs go under <out>/<split>/")
    split: Literal["test", "train"] = Field("test", description="Dataset split to write")
    shard_size: int = Field(DEFAULT_SHARD_SIZE, ge=1, description="Images per task run")
    parser: str = Field("geometric", description="'geometric' (bundled, approximate) or 'yolo:<weights URL>'")
    fit: Literal["pad", "crop"] = Field(
        "pad", description="How other aspect ratios reach 768x1024: pad with the background, or crop around the person"
    )
    agnostic_recipe: Literal["hrviton", "vitonhd"] = Field(
        "hrviton", description="Clothing-agnostic image recipe: HR-VITON get_agnostic or VITON-HD get_img_agnostic"
    )
    pose_model: str | None = Field(None, description="URL of a MediaPipe Tasks .task pose model; None = bundled")
    cloth_mask_model: str | None = Field(None, description="URL of a ClothUNet checkpoint; None = classical")
    visibility_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Joints below it are written as 0,0,0")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Larger images are rejected as bombs")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for every URL")

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
