"""Normalise: decode catalog bytes to RGB, fit them onto the 768x1024 canvas, encode deterministically.

Pure functions on bytes and numpy arrays (no file paths, no storage, no Prefect).

Decisions:
- Every per-input problem is an `ItemError` with a stable code (vitonhd_models/errors.py); the message says why.
- The pixel-count limit is checked from the header, before any pixel is decoded, and PIL's own
  decompression-bomb guard is turned into the same error. PIL's global `MAX_IMAGE_PIXELS` and
  `LOAD_TRUNCATED_IMAGES` are never changed: a truncated file must fail, not decode half grey.
- EXIF orientation is applied, so the output is the image as a viewer shows it.
- Transparency is composited over white (catalog shots are on white), never dropped to black.
- 16-bit greyscale (`I;16*`) is scaled by its full 16-bit range (v / 257); 32-bit int (`I`) and float
  (`F`) greyscale have no fixed range and are stretched from their own min..max to 0..255. Nothing clips.
- An embedded ICC profile is converted to sRGB where it is not sRGB already (CMYK and wide-gamut
  photos otherwise come out with wrong colours); a profile PIL cannot use is ignored.
- Canvas: exactly 768 (W) x 1024 (H) (contract §1.2: `Resize(768)` is a no-op only for 768x1024). The
  resampling maps source to output by exactly `out = src * scale + offset` (PIL's `box` argument), so
  `FitRecord` can move coordinates between the two without a half-pixel drift.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from pydantic import Field

from tasks.records.config import Config
from tasks.stages.image_codec import decode_rgb, encode_jpeg
from tasks.stages.model_cache import ModelFile
from tasks.stages.pose import person_locator
from vitonhd_models.contract import IMAGE_HEIGHT, IMAGE_WIDTH, JPEG_QUALITY
from vitonhd_models.errors import (
    DECOMPRESSION_BOMB,
    EMPTY_FILE,
    NOT_AN_IMAGE,
    TOO_SMALL,
    TRUNCATED,
    UNSUPPORTED_MODE,
    ItemError,
)

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000: above any real catalog photo, far below a memory problem
DEFAULT_MIN_SIDE = 64  # smaller than this cannot hold a usable garment or person at 768x1024

# Exceptions PIL (and the codecs under it) raise on a file whose pixel data cannot be read to the end.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)

WHITE = (255, 255, 255)


# ---------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> Image.Image:
    """Decode image bytes (JPEG, PNG, WebP, anything PIL reads) to an RGB image, EXIF orientation applied.

    Raises `ItemError` with EMPTY_FILE, NOT_AN_IMAGE, DECOMPRESSION_BOMB, TOO_SMALL, TRUNCATED or
    UNSUPPORTED_MODE. Multi-frame files (GIF, APNG, MPO) give their first frame.
    """
    if not data:
        raise ItemError(EMPTY_FILE, "the file is empty (0 bytes)")

    # PIL's own guard raises DecompressionBombError past 2x MAX_IMAGE_PIXELS (and warns past 1x, which
    # is an error only where a warnings filter says so). Both are caught; the global filters and limits
    # are left alone (changing them is not thread-safe), and our own header check below is the real limit.
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ItemError(DECOMPRESSION_BOMB, f"the header declares too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ItemError(
            NOT_AN_IMAGE, f"not an image PIL can identify ({len(data)} bytes, starts {data[:8]!r})"
        ) from exc
    except _DECODE_ERRORS as exc:
        # PIL recognised the format but the header itself is cut short or broken.
        raise ItemError(TRUNCATED, f"the image header is truncated or corrupt: {exc}") from exc

    fmt = image.format or "image"
    width, height = image.size
    if width * height > max_pixels:
        raise ItemError(
            DECOMPRESSION_BOMB,
            f"the {fmt} header declares {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels}",
        )
    if min(width, height) < min_side:
        raise ItemError(
            TOO_SMALL, f"the {fmt} is {width}x{height}; both sides must be at least {min_side} pixels"
        )

    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ItemError(DECOMPRESSION_BOMB, f"too many pixels: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ItemError(TRUNCATED, f"the {fmt} pixel data is truncated or corrupt: {exc}") from exc

    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the photo; keep it unrotated
        pass

    try:
        rgb = _to_rgb(image)
    except ItemError:
        raise
    except Exception as exc:  # noqa: BLE001 - any conversion failure is this item's problem
        raise ItemError(UNSUPPORTED_MODE, f"cannot convert {fmt} mode {image.mode!r} to RGB: {exc}") from exc
    if rgb.mode != "RGB":
        raise ItemError(UNSUPPORTED_MODE, f"{fmt} mode {image.mode!r} converted to {rgb.mode!r}, not RGB")
    return rgb


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16"):
        return _grey_array_to_rgb(np.asarray(image).astype(np.float64) / 257.0)
    if mode in ("I", "F"):
        return _grey_array_to_rgb(_stretch(np.asarray(image).astype(np.float64)))
    if mode == "CMYK" or (mode == "RGB" and "icc_profile" in image.info):
        image = _icc_to_srgb(image)
        mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if _has_transparency(image):
        rgba = image.convert("RGBA")
        if rgba.mode != "RGBA":
            raise ItemError(UNSUPPORTED_MODE, f"mode {mode!r} with transparency did not convert to RGBA")
        canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map the finite min..max of `values` to 0..255 (a constant image keeps its value, clipped)."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros_like(values)
    lo = float(values[finite].min())
    hi = float(values[finite].max())
    out = np.where(finite, values, lo)
    if hi == lo:
        return np.full_like(out, min(max(lo, 0.0), 255.0))
    return (out - lo) * (255.0 / (hi - lo))


def _grey_array_to_rgb(grey: np.ndarray) -> Image.Image:
    grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey8[:, :, None], 3, axis=2), mode="RGB")


_SRGB_PROFILE = None


def _icc_to_srgb(image: Image.Image) -> Image.Image:
    """Convert RGB/CMYK with an embedded non-sRGB ICC profile to sRGB; without one, leave it to PIL."""
    global _SRGB_PROFILE
    icc = image.info.get("icc_profile")
    if not icc:
        return image.convert("RGB")
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = (ImageCms.getProfileDescription(source) or "").lower()
        if image.mode == "RGB" and "srgb" in description:
            return image
        if _SRGB_PROFILE is None:
            _SRGB_PROFILE = ImageCms.createProfile("sRGB")
        converted = ImageCms.profileToProfile(image, source, _SRGB_PROFILE, outputMode="RGB")
    except Exception:  # noqa: BLE001 - an unusable profile: PIL's plain conversion is the fallback
        return image.convert("RGB")
    if converted is None or converted.mode != "RGB":
        return image.convert("RGB")
    converted.info.pop("icc_profile", None)
    return converted


# ---------------------------------------------------------------------------------------------------
# Background estimate
# ---------------------------------------------------------------------------------------------------

BORDER_STRIP_FRACTION = 0.01  # 1% of the short side: thin enough to miss the subject in a framed shot
BORDER_STRIP_MIN = 2  # at least two pixels, so one dirty edge row does not decide


def border_strip_width(height: int, width: int) -> int:
    return max(BORDER_STRIP_MIN, int(round(min(height, width) * BORDER_STRIP_FRACTION)))


def border_pixels(image: np.ndarray) -> np.ndarray:
    """The pixels of the thin strip along all four edges, as (N, C) (or (N,) for a 2-D array)."""
    height, width = image.shape[:2]
    strip = min(border_strip_width(height, width), height, width)
    parts = [
        image[:strip],
        image[height - strip :],
        image[strip : height - strip, :strip],
        image[strip : height - strip, width - strip :],
    ]
    tail = image.shape[2:]
    return np.concatenate([part.reshape((-1,) + tail) for part in parts], axis=0)


def estimate_background_rgb(image_rgb: np.ndarray) -> tuple[int, int, int]:
    """The per-channel median of a thin border strip, as ints: the colour a product shot sits on."""
    _check_rgb(image_rgb)
    median = np.median(border_pixels(image_rgb).astype(np.float64), axis=0)
    return tuple(int(v) for v in np.clip(np.rint(median), 0, 255))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
# Fitting onto the canvas
# ---------------------------------------------------------------------------------------------------

FIT_METHODS = ("pad", "crop")
CANVAS_ASPECT = IMAGE_WIDTH / IMAGE_HEIGHT  # 3:4, width over height
CROP_MARGIN_FRACTION = 0.05  # room around the person box (of its larger side): no limb touches the edge
# A crop window that reaches past the image is built whole (the image on its background colour) and then
# resampled. A person box as wide as a very wide source needs a window 4/3 of that width tall (26400x35200, 2.8 GB,
# for a 24000-px box; terabytes at the 64 MP limit's 1,000,000x64), which kills the worker or fails for memory.
# Past this many pixels (768 MB; a 64 MP photo up to about 2.4:1 or 1:4 stays under it: its result is as before) only
# the part of the image the window reads is used, reduced k times (k x k blocks averaged) so the window is
# at most CROP_REDUCED_WINDOW canvases wide: still more than half that, so Lanczos shrinks it onto the canvas as
# before, and the mapping stays exactly `source / k`, so the FitRecord is unchanged.
MAX_CROP_WINDOW_PIXELS = 256_000_000
CROP_REDUCED_WINDOW = 4


@dataclass(frozen=True)
class FitRecord:
    """How a source image was placed on the canvas: `out = src * scale + offset` (pixel-edge coordinates).

    background_rgb is the fill colour where the canvas holds padding, None where it holds none.
    """

    method: str
    scale: float
    offset_x: float
    offset_y: float
    source_width: int
    source_height: int
    background_rgb: tuple[int, int, int] | None = None

    def to_output(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale + self.offset_x, y * self.scale + self.offset_y

    def content_box(self) -> tuple[float, float, float, float]:
        """Where the photo itself lies on the canvas (x0, y0, x1, y1), padding excluded."""
        x0, y0 = self.to_output(0, 0)
        x1, y1 = self.to_output(self.source_width, self.source_height)
        return max(0.0, x0), max(0.0, y0), min(float(IMAGE_WIDTH), x1), min(float(IMAGE_HEIGHT), y1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitRecord:
        background = data.get("background_rgb")
        return cls(
            method=data["method"],
            scale=float(data["scale"]),
            offset_x=float(data["offset_x"]),
            offset_y=float(data["offset_y"]),
            source_width=int(data["source_width"]),
            source_height=int(data["source_height"]),
            background_rgb=None if background is None else tuple(int(v) for v in background),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the manifest (JSON/Parquet friendly)."""
        return {
            "method": self.method,
            "scale": float(self.scale),
            "offset_x": float(self.offset_x),
            "offset_y": float(self.offset_y),
            "source_width": int(self.source_width),
            "source_height": int(self.source_height),
            "background_rgb": None if self.background_rgb is None else [int(v) for v in self.background_rgb],
        }


def fit_to_canvas(
    image_rgb: np.ndarray,
    method: str = "pad",
    person_box: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, FitRecord]:
    """Place an (H, W, 3) uint8 RGB image on the 1024x768x3 canvas.

    "pad": scale to fit inside, keep the aspect ratio, centre, fill with the border's background colour.
    "crop": the largest 3:4 window of the image, centred on `person_box` (x0, y0, x1, y1 in source
    pixels) and holding it with a margin; a centred window without a box. A box the largest window
    cannot hold gets a larger window that reaches past the image, filled with the background colour.
    A 768x1024 input comes back unchanged (bit-exact) with either method.
    """
    _check_rgb(image_rgb)
    if method not in FIT_METHODS:
        raise ValueError(f"unknown fit method {method!r}; expected one of {FIT_METHODS}")
    height, width = image_rgb.shape[:2]
    if (width, height) == (IMAGE_WIDTH, IMAGE_HEIGHT):
        return np.array(image_rgb, dtype=np.uint8, copy=True, order="C"), FitRecord(
            method, 1.0, 0.0, 0.0, width, height, None
        )
    if method == "pad":
        return _fit_pad(image_rgb)
    return _fit_crop(image_rgb, person_box)


def _fit_pad(image_rgb: np.ndarray) -> tuple[np.ndarray, FitRecord]:
    height, width = image_rgb.shape[:2]
    scale = min(IMAGE_WIDTH / width, IMAGE_HEIGHT / height)
    new_w = min(IMAGE_WIDTH, max(1, int(round(width * scale))))
    new_h = min(IMAGE_HEIGHT, max(1, int(round(height * scale))))
    # The source region that maps exactly onto new_w x new_h at `scale` (a hair off the full image).
    # Rounding can push it a fraction of a pixel past the image, which PIL refuses: clamp.
    box = (0.0, 0.0, min(float(width), new_w / scale), min(float(height), new_h / scale))
    resized = _resize(image_rgb, (new_w, new_h), box)
    off_x = (IMAGE_WIDTH - new_w) // 2
    off_y = (IMAGE_HEIGHT - new_h) // 2
    padded = new_w != IMAGE_WIDTH or new_h != IMAGE_HEIGHT
    background = estimate_background_rgb(image_rgb) if padded else None
    canvas = np.empty((IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    canvas[:] = background if background is not None else WHITE
    canvas[off_y : off_y + new_h, off_x : off_x + new_w] = resized
    return canvas, FitRecord("pad", float(scale), float(off_x), float(off_y), width, height, background)


def _fit_crop(
    image_rgb: np.ndarray, person_box: tuple[int, int, int, int] | None
) -> tuple[np.ndarray, FitRecord]:
    height, width = image_rgb.shape[:2]
    # The largest 3:4 window inside the image.
    if width / height > CANVAS_ASPECT:
        win_h = float(height)
        win_w = win_h * CANVAS_ASPECT
    else:
        win_w = float(width)
        win_h = win_w / CANVAS_ASPECT

    if person_box is None:
        cx, cy = width / 2.0, height / 2.0
        need_w = need_h = 0.0
    else:
        x0, y0, x1, y1 = _check_box(person_box, width, height)
        margin = CROP_MARGIN_FRACTION * max(x1 - x0, y1 - y0)
        need_w = (x1 - x0) + 2 * margin
        need_h = (y1 - y0) + 2 * margin
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0

    if need_w <= win_w and need_h <= win_h:
        # Centre on the box, then slide back inside the image (the box still fits: it is inside too).
        left = min(max(cx - win_w / 2.0, 0.0), width - win_w)
        top = min(max(cy - win_h / 2.0, 0.0), height - win_h)
        background = None
    else:
        # The box (with margin) is wider or taller than any window inside the image: grow the window
        # past the image, centred on the box, and fill the outside with the background colour.
        win_w = max(need_w, need_h * CANVAS_ASPECT)
        win_h = win_w / CANVAS_ASPECT
        left = cx - win_w / 2.0
        top = cy - win_h / 2.0
        background = estimate_background_rgb(image_rgb)

    scale = IMAGE_WIDTH / win_w
    if background is None:
        out = _resize(image_rgb, (IMAGE_WIDTH, IMAGE_HEIGHT), (left, top, left + win_w, top + win_h))
    else:
        out = _resize_past_the_image(image_rgb, (left, top, win_w, win_h), background)
    record = FitRecord("crop", float(scale), -left * scale, -top * scale, width, height, background)
    return out, record


def _resize_past_the_image(
    image_rgb: np.ndarray, window: tuple[float, float, float, float], background: tuple[int, int, int]
) -> np.ndarray:
    """Resample a window (left, top, width, height in source pixels) that reaches past the image to the canvas:
    the image on the background colour, built whole, then resampled (`_under_window` where that is too big)."""
    height, width = image_rgb.shape[:2]
    pad_l, pad_t, pad_r, pad_b = _pads(window, width, height)
    if (height + pad_t + pad_b) * (width + pad_l + pad_r) > MAX_CROP_WINDOW_PIXELS:
        image_rgb, window = _under_window(image_rgb, window, background)
        height, width = image_rgb.shape[:2]
        pad_l, pad_t, pad_r, pad_b = _pads(window, width, height)
    left, top, win_w, win_h = window
    big = np.empty((height + pad_t + pad_b, width + pad_l + pad_r, 3), dtype=np.uint8)
    big[:] = background
    big[pad_t : pad_t + height, pad_l : pad_l + width] = image_rgb
    box = (left + pad_l, top + pad_t, left + pad_l + win_w, top + pad_t + win_h)
    return _resize(big, (IMAGE_WIDTH, IMAGE_HEIGHT), box)


def _under_window(
    image_rgb: np.ndarray, window: tuple[float, float, float, float], background: tuple[int, int, int]
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The part of the image the window's resampling reads (the window and the filter's reach), reduced k times
    so the window is at most CROP_REDUCED_WINDOW canvases wide, and the window in that part's pixels."""
    left, top, win_w, win_h = window
    height, width = image_rgb.shape[:2]
    k = max(1, int(np.ceil(win_w / (CROP_REDUCED_WINDOW * IMAGE_WIDTH))))
    reach = int(np.ceil(3.0 * max(1.0, win_w / IMAGE_WIDTH))) + k + 1  # Lanczos reads 3 pixels past each edge
    x0, y0 = max(0, int(np.floor(left)) - reach), max(0, int(np.floor(top)) - reach)
    x1, y1 = min(width, int(np.ceil(left + win_w)) + reach), min(height, int(np.ceil(top + win_h)) + reach)
    part = image_rgb[y0:y1, x0:x1]
    window = (left - x0, top - y0, win_w, win_h)
    if k == 1:
        return part, window
    reduced = np.asarray(Image.fromarray(np.ascontiguousarray(part), mode="RGB").reduce(k), dtype=np.float32)
    # PIL averages a partial last block over the pixels it has; the block stands for k x k pixels, the missing ones
    # background, so the reduced image is exactly `part / k`.
    rest_y, rest_x, colour = (y1 - y0) % k, (x1 - x0) % k, np.asarray(background, dtype=np.float32)
    if rest_x:
        reduced[:, -1] = (reduced[:, -1] * rest_x + colour * (k - rest_x)) / k
    if rest_y:
        reduced[-1] = (reduced[-1] * rest_y + colour * (k - rest_y)) / k
    left, top, win_w, win_h = window
    return np.clip(np.rint(reduced), 0, 255).astype(np.uint8), (left / k, top / k, win_w / k, win_h / k)


def _pads(window: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """Whole pixels of background a window needs left, top, right and bottom of a width x height image."""
    left, top, win_w, win_h = window
    return (int(np.ceil(max(0.0, -left))), int(np.ceil(max(0.0, -top))),
            int(np.ceil(max(0.0, left + win_w - width))), int(np.ceil(max(0.0, top + win_h - height))))


def _resize(
    image_rgb: np.ndarray, size_wh: tuple[int, int], box: tuple[float, float, float, float]
) -> np.ndarray:
    """Resample the float `box` of the image to `size_wh` with Lanczos (antialiased when shrinking)."""
    pil = Image.fromarray(np.ascontiguousarray(image_rgb), mode="RGB")
    out = pil.resize(size_wh, Image.Resampling.LANCZOS, box=box)
    return np.asarray(out, dtype=np.uint8).copy()


def _check_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"person_box must be (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = max(0.0, x0), min(float(width), x1)
    y0, y1 = max(0.0, y0), min(float(height), y1)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"person_box {tuple(box)!r} is empty or outside the {width}x{height} image")
    return x0, y0, x1, y1


def _check_rgb(image_rgb: np.ndarray) -> None:
    if not isinstance(image_rgb, np.ndarray) or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        shape = getattr(image_rgb, "shape", None)
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {shape}")
    if image_rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array, got dtype {image_rgb.dtype}")
    if image_rgb.shape[0] == 0 or image_rgb.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image_rgb.shape}")


# ---------------------------------------------------------------------------------------------------
# The ingest stage (declared in tasks/stages/registry.py): source bytes -> the 768x1024 image as written
# ---------------------------------------------------------------------------------------------------


class IngestSettings(Config):
    """The ingest stage's fields of `PreprocessConfig` (the run's `max_pixels` is read too)."""

    fit: Literal["pad", "crop"] = Field(
        "pad", description="How other aspect ratios reach 768x1024: pad with the background, or crop around the person"
    )


def ingest_params(config, weights: ModelFile | None, *, person: bool) -> dict[str, Any]:
    """The fingerprint parameters: garments are always padded."""
    return {"fit": config.fit if person else "pad", "max_pixels": config.max_pixels, "jpeg": JPEG_QUALITY}


@dataclass(frozen=True)
class Ingested:
    """Ingest's result: the canvas as its JPEG decodes (what every later stage and every loader of
    the dataset sees), how the photo was placed on it, and the encoded file itself."""

    image: np.ndarray
    fit: FitRecord | None
    jpeg: bytes | None = None  # None when loaded back from an earlier run's file


def prepare_ingest(env) -> None:
    """Builds the person locator ahead of the first item when persons are cropped around it."""
    if env.config.fit == "crop":
        person_locator(env)


def ingest(env, item, *, person: bool) -> Ingested:
    """Decode the source, fit it onto the canvas (crop: around the person the pose model finds), encode."""
    image = decode_image(item.source, max_pixels=env.config.max_pixels)
    array = np.asarray(image)
    method = env.config.fit if person else "pad"
    box = None
    if method == "crop":
        box = person_locator(env).person_box(array)
    canvas, fit = fit_to_canvas(array, method=method, person_box=box)
    jpeg = encode_jpeg(canvas, quality=JPEG_QUALITY)
    return Ingested(decode_rgb(jpeg), fit, jpeg)


def encode_ingested(value: Ingested) -> tuple[bytes, ...]:
    return (value.jpeg,)


def ingested_fields(env, value: Ingested) -> dict[str, Any]:
    return {
        "fit": json.dumps(value.fit.to_dict(), sort_keys=True),
        "source_width": value.fit.source_width,
        "source_height": value.fit.source_height,
    }


def load_ingested(work, files: tuple[bytes, ...]) -> Ingested:
    fit = FitRecord.from_dict(json.loads(work.previous_fit)) if work.previous_fit else None
    return Ingested(decode_rgb(files[0]), fit)
