"""Image files as the dataset holds them: deterministic JPEG and PNG encoding (no timestamps, no EXIF, no ICC;
the same array gives the same bytes), and our own files decoded back. Every stage that writes an image uses it."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vitonhd_models.contract import JPEG_QUALITY


def encode_jpeg(image_rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an (H, W, 3) RGB or (H, W) greyscale uint8 array as baseline JPEG, no metadata."""
    pil = _array_to_pil(image_rgb, allow=("RGB", "L"))
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(quality), optimize=False, progressive=False)
    return buffer.getvalue()


def encode_png(array: np.ndarray, palette: Sequence[int] | None = None) -> bytes:
    """Encode a uint8 array as PNG: (H, W) -> L (or P with `palette`, a flat RGB list), (H, W, 3) -> RGB,
    (H, W, 4) -> RGBA. No tIME or text chunks, fixed compression."""
    pil = _array_to_pil(array, allow=("L", "RGB", "RGBA"))
    if palette is not None:
        if pil.mode != "L":
            raise ValueError("a palette needs a 2-D index array")
        pil = pil.copy()
        pil.putpalette(list(palette))  # turns the L image into P with these colours
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _array_to_pil(array: np.ndarray, allow: tuple[str, ...]) -> Image.Image:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {getattr(array, 'dtype', type(array))}")
    if array.ndim == 2:
        mode = "L"
    elif array.ndim == 3 and array.shape[2] == 3:
        mode = "RGB"
    elif array.ndim == 3 and array.shape[2] == 4:
        mode = "RGBA"
    else:
        raise ValueError(f"cannot encode an array of shape {array.shape}")
    if mode not in allow:
        raise ValueError(f"cannot encode a {mode} array of shape {array.shape} here; allowed {allow}")
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def decode_rgb(data: bytes) -> np.ndarray:
    """One of our own written images back as an RGB array (what VITON-HD's loaders will see)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
