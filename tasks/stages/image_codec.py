"""Image files as the dataset holds them: deterministic JPEG and PNG encoding (no timestamps, no EXIF, no ICC;
the same array gives the same bytes), our own files decoded back, and signed JPEGs (files a user may replace with
their own, told apart by their bytes). Every stage that writes an image uses it."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence

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


# ---------------------------------------------------------------------------------------------------
# Signed files: a file a user may put in place of ours (a DensePose render of their own) carries a JPEG
# comment naming the stage that wrote it and the SHA-256 of the file without the comment. Any change to the
# file (another tool's render in its place, an edit, a re-save, which keeps the comment) breaks the
# signature, so the engine tells our file from anyone else's by its bytes alone, whatever the manifest says.
# ---------------------------------------------------------------------------------------------------

SIGNATURE_PREFIX = b"vitonprep "
_SOI, _APP0, _COM, _SOS, _EOI = b"\xff\xd8", 0xE0, 0xFE, 0xDA, 0xD9


def _signature(writer: str, unsigned: bytes) -> bytes:
    return SIGNATURE_PREFIX + writer.encode() + b" sha256=" + hashlib.sha256(unsigned).hexdigest().encode()


def _segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each header segment of a JPEG, up to the scan; stops at anything unexpected."""
    position = len(_SOI)
    while position + 4 <= len(data) and data[position] == 0xFF and data[position + 1] not in (_SOS, _EOI):
        end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        yield data[position + 1], position, end
        position = end


def sign_jpeg(data: bytes, writer: str) -> bytes:
    """A JPEG `encode_jpeg` made, signed by `writer` (a stage's name): a comment segment after the JFIF header."""
    if not data.startswith(_SOI):
        raise ValueError("not a JPEG")
    first = next(_segments(data), None)
    at = first[2] if first is not None and first[0] == _APP0 else len(_SOI)
    payload = _signature(writer, data)
    return data[:at] + b"\xff" + bytes([_COM]) + (len(payload) + 2).to_bytes(2, "big") + payload + data[at:]


def signed_by(data: bytes, writer: str) -> bool:
    """Whether `data` is a file `sign_jpeg(..., writer)` made, unchanged since."""
    if not data.startswith(_SOI):
        return False
    for marker, start, end in _segments(data):
        if marker == _COM and data[start + 4:end].startswith(SIGNATURE_PREFIX):
            return data[start + 4:end] == _signature(writer, data[:start] + data[end:])
    return False
