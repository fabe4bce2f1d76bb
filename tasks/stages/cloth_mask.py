"""Cloth mask: the garment's silhouette in a product shot, as a 1-channel 0/255 mask.

Pure functions on numpy arrays (no file paths, no storage, no Prefect).

Default (`cloth_mask_classical`): background removal for product shots on plain backgrounds.
1. The background colour is modelled from the image border (median and 75th-percentile spread in
   CIE Lab, on a median-filtered copy at half the size that flattens JPEG ringing); the colour
   distances are computed at that size and upsampled (they are smooth), the edges below at full size.
2. A pixel is garment when its colour is far from that model *or* it lies on an edge (Canny on the
   lightness, thresholds relative to the border's own gradients): white garments on white-ish
   backgrounds differ by 1-3 Lab units inside, but keep a visible outline.
3. Close, fill holes, open, keep the largest component, fill holes. The hole fill is what turns a
   white garment's outline back into a solid silhouette, and what puts a neck opening's visible inner
   back into the mask, as in the VITON-HD masks.
4. The outer band of the mask is re-decided where garment and background contrast strongly: a pixel
   stays garment when it is closer to the nearby garment colour than to the background. This trims
   the halo that low thresholds and JPEG ringing leave around dark garments. Only the band's pixels
   are computed (colours read at their positions from the half-size image).
5. Background pockets are taken out again: a sizeable region inside the mask whose pixels all look like
   the background (colour within the threshold, no edge) and whose surrounding garment contrasts with it
   is background the fill enclosed (between an arm hanging at the side and the torso, under a strap),
   which the VITON-HD masks leave out. The band around each pocket is then re-decided as in 4. A white
   garment's own fabric, close to the background in colour, has no contrasting surround and stays.
Limits: one garment per image (the largest component wins: a detached belt is dropped); a background
that is not plain (a gradient, a room) raises the thresholds with the border spread and may lose a
white garment, or yield NO_GARMENT. A print of exactly the background's colour, larger than a pocket's
minimum, on a garment of another colour is left out like a pocket.

Option (`UNetClothMasker`): a small U-Net (`vitonhd_models.cloth_unet.ClothUNet`) from a checkpoint
(a strict state dict), with the same post-processing. PyTorch is imported only when one is configured.

Output contract (contract §1.1, §5): `cloth-mask/<stem>.jpg`, a single-channel JPEG that the loaders
read as `np.array(mask) >= 128`; `encode_cloth_mask` writes one that thresholds back to the same mask.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping

import cv2
import numpy as np
from pydantic import Field

from tasks.records.config import Config
from tasks.stages.binary_masks import fill_holes, largest_component
from tasks.stages.image_codec import encode_jpeg
from tasks.stages.model_cache import ModelFile
from tasks.stages.normalize import border_pixels, border_strip_width
from vitonhd_models.errors import NO_GARMENT, ItemError

# ---------------------------------------------------------------------------------------------------
# Thresholds (each with why)
# ---------------------------------------------------------------------------------------------------

MIN_COVERAGE = 0.01  # below 1% of the frame there is no garment to speak of (a speck, dust, a label)
MAX_COVERAGE = 0.98  # above 98% the "background" model failed: no plain background, or a full-bleed crop

COLOUR_SCALE = 0.5  # the colour distances are computed at half the size (the edges at full size)
GRADIENT_BLUR_SIGMA = 1.0  # just enough blur that single-pixel JPEG noise is not an edge
MEDIAN_RADIUS_FRACTION = 0.004  # radius 1 at COLOUR_SCALE at 768 wide (a 3x3 median of 2x2 means, ~6x6 px
# of the image): flattens JPEG ringing, keeps edges
DELTA_E_FLOOR = 0.6  # Lab distance a flat (retouched) studio background stays under, JPEG noise included
BORDER_SPREAD_PERCENTILE = 75  # the border's spread, robust to a garment cut by the frame (up to 1/4 of it)
BORDER_SPREAD_FACTOR = 4.0  # on a noisy/textured background, 4x that spread (~6 sigma of Gaussian noise)
GRADIENT_FLOOR = 0.35  # Lab L per pixel: a faint white-on-white outline is ~1, a flat background ~0.1
GRADIENT_SPREAD_FACTOR = 4.0  # likewise relative to the border's gradients (same percentile)
CANNY_HIGH_FACTOR = 1.5  # Canny's hysteresis: an edge starts at 1.5x the threshold and continues down to 1x
CLOSE_RADIUS_FRACTION = 0.006  # ~5 px at 768 wide: bridges gaps in a faint white-garment outline
OPEN_RADIUS_FRACTION = 0.003  # ~2 px at 768 wide: removes specks and 1-px lines, keeps thin straps
BAND_RADIUS_FRACTION = 0.012  # ~9 px at 768 wide: the outer band re-decided per pixel (ringing + closing)
BAND_RADIUS_MIN = 8  # JPEG ringing spreads up to one 8x8 block from an edge, whatever the image size
REFINE_MIN_CONTRAST = 10.0  # Lab units between garment and background below which the band is kept as is
LOCAL_COLOUR_MIN_WEIGHT = 0.05  # below this share of interior pixels nearby, no local garment colour: keep
POCKET_MIN_AREA_FRACTION = 0.0005  # ~390 px (a 20x20 patch) at 768x1024: the VITON-HD masks' own holes are
# larger (600 px and up); below it a background-coloured spot is a print's dot or a stray fold, not a pocket
POCKET_RING_FACTOR = 2  # the surround a pocket's garment colour is read from: 2 band radii (~18 px at 768
# wide), past the JPEG halo a saturated garment leaves on the background beside it (up to ~1 band radius)

REMAP_MAX_SIDE = 32767  # SHRT_MAX: cv2.remap asserts that every side of its source and maps is below it

CLOTH_MASK_JPEG_QUALITY = 100  # edges of a 0/255 mask ring least at 100; decoded, nothing crosses 128


# ---------------------------------------------------------------------------------------------------
# Classical path
# ---------------------------------------------------------------------------------------------------


def cloth_mask_classical(cloth_rgb: np.ndarray, *, check: bool = True) -> np.ndarray:
    """The garment mask of a product shot on a plain background: (H, W) uint8, values 0 and 255.

    Raises ItemError(NO_GARMENT) when the mask covers less than MIN_COVERAGE or more than
    MAX_COVERAGE of the image (`check=False` returns such a mask instead, for diagnostics).
    """
    _check_rgb(cloth_rgb)
    cloth_rgb = np.ascontiguousarray(cloth_rgb)
    height, width = cloth_rgb.shape[:2]
    short_side = min(height, width)

    # Colour distance from the border's colour model, at COLOUR_SCALE (a median-smoothed copy).
    colour_size = (max(1, round(width * COLOUR_SCALE)), max(1, round(height * COLOUR_SCALE)))
    small = cv2.resize(cloth_rgb, colour_size, interpolation=cv2.INTER_AREA)
    median_k = 2 * max(1, int(MEDIAN_RADIUS_FRACTION * short_side * COLOUR_SCALE)) + 1
    smooth = cv2.medianBlur(small, median_k)
    lab = cv2.cvtColor(smooth.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)  # L 0..100, a/b ~ -128..127
    border_lab = border_pixels(lab)
    background = np.median(border_lab, axis=0).astype(np.float32)
    border_distance = np.linalg.norm(border_lab - background, axis=1)
    distance_spread = float(np.percentile(border_distance, BORDER_SPREAD_PERCENTILE))
    distance_threshold = max(DELTA_E_FLOOR, BORDER_SPREAD_FACTOR * distance_spread)
    distance = cv2.resize(_distance(lab, background), (width, height), interpolation=cv2.INTER_LINEAR)

    # Edges at full size: the outline a white garment keeps even where its fabric matches the
    # background. Canny's thin, non-maximum-suppressed edges sit on the outline itself, not a
    # blur-width outside it. A thin faint outline (a white strap's edge) survives a light Gaussian blur,
    # not the median. Canny runs on CIE L in 0..255 (8-bit Lab) with a 3x3 Sobel: its magnitude is
    # 8 * 2.55 times the gradient in L units per pixel.
    lightness8 = cv2.cvtColor(cv2.GaussianBlur(cloth_rgb, (0, 0), GRADIENT_BLUR_SIGMA), cv2.COLOR_RGB2LAB)[:, :, 0]
    gradient_spread = float(np.percentile(_border_gradient(lightness8), BORDER_SPREAD_PERCENTILE))
    gradient_threshold = max(GRADIENT_FLOOR, GRADIENT_SPREAD_FACTOR * gradient_spread)
    canny_scale = 8.0 * 2.55
    edges = cv2.Canny(
        lightness8,
        gradient_threshold * canny_scale,
        CANNY_HIGH_FACTOR * gradient_threshold * canny_scale,
        apertureSize=3,
        L2gradient=True,
    )

    far = cv2.compare(distance, distance_threshold, cv2.CMP_GT)
    mask = cv2.bitwise_or(far, edges)
    close_r = max(1, int(round(CLOSE_RADIUS_FRACTION * short_side)))
    open_r = max(1, int(round(OPEN_RADIUS_FRACTION * short_side)))
    band_r = max(BAND_RADIUS_MIN, int(round(BAND_RADIUS_FRACTION * short_side)))

    mask = _morph(mask, cv2.MORPH_CLOSE, close_r)
    mask = fill_holes(mask)
    mask = _morph(mask, cv2.MORPH_OPEN, open_r)
    mask = largest_component(mask)
    mask = fill_holes(mask)
    if np.count_nonzero(mask) >= MIN_COVERAGE * mask.size:
        mask = _refine_boundary(mask, lab, background, band_r)
        mask = _morph(mask, cv2.MORPH_OPEN, open_r)
        mask = fill_holes(largest_component(mask))
        # Plain: looks like the background (colour within the threshold, not on or beside an edge).
        plain = cv2.bitwise_not(cv2.bitwise_or(far, cv2.dilate(edges, np.ones((3, 3), np.uint8))))
        pockets = background_pockets(mask, plain, lab, background, band_r)
        if pockets.any():
            mask = _refine_boundary(cv2.bitwise_and(mask, cv2.bitwise_not(pockets)), lab, background, band_r,
                                    around=pockets)
            mask = _morph(mask, cv2.MORPH_OPEN, open_r)
            mask = fill_holes(largest_component(mask), keep_open=pockets)
    if check:
        check_coverage(mask)
    return mask


def _distance(lab: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Per-pixel Lab distance (CIE76 delta E) of an (H, W, 3) float32 image to one colour."""
    delta = lab - colour
    return np.sqrt(np.einsum("ijk,ijk->ij", delta, delta))


def _border_gradient(lightness8: np.ndarray) -> np.ndarray:
    """Gradient magnitudes (CIE L units per pixel) of the border strip: four Sobels on the strips alone."""
    height, width = lightness8.shape
    strip = min(border_strip_width(height, width), height, width)
    lightness = lightness8.astype(np.float32) * np.float32(100.0 / 255.0)

    def magnitude(window: np.ndarray) -> np.ndarray:
        grad_x = cv2.Sobel(window, cv2.CV_32F, 1, 0, ksize=3)
        grad_y = cv2.Sobel(window, cv2.CV_32F, 0, 1, ksize=3)
        return cv2.magnitude(grad_x, grad_y) / 8.0

    if 2 * strip + 2 >= min(height, width):  # a tiny image: the whole of it
        return border_pixels(magnitude(lightness))
    # Each strip with one more row/column of context, so its Sobel sees what the full image's would.
    top = magnitude(lightness[: strip + 1])[:strip]
    bottom = magnitude(lightness[height - strip - 1 :])[1:]
    left = magnitude(lightness[strip - 1 : height - strip + 1, : strip + 1])[1:-1, :strip]
    right = magnitude(lightness[strip - 1 : height - strip + 1, width - strip - 1 :])[1:-1, 1:]
    return np.concatenate([part.reshape(-1) for part in (top, bottom, left, right)])


def _refine_boundary(mask: np.ndarray, lab: np.ndarray, background: np.ndarray, band_r: int,
                     around: np.ndarray | None = None) -> np.ndarray:
    """Re-decide the pixels of the mask's outer band: garment where closer to the nearby garment colour
    than to the background colour. Trims the halo of JPEG ringing and low thresholds around dark
    garments, and leaves white garments (whose colour is close to the background's) nearly as they are.

    `lab` is the colour image at COLOUR_SCALE; the band's pixels read it (and the nearby garment colour,
    a wide blur of the inner garment's colours) by bilinear interpolation at their own positions.
    With `around` (a 0/255 mask), only the band's pixels within band_r of it are re-decided."""
    height, width = mask.shape
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band_r + 1, 2 * band_r + 1))
    inner = cv2.erode(mask, kernel)
    band = cv2.bitwise_and(mask, cv2.bitwise_not(inner))
    if around is not None:
        band = cv2.bitwise_and(band, cv2.dilate(around, kernel))
    rows, cols = np.nonzero(band)
    if len(rows) == 0:
        return mask
    # The nearby garment colour: blur(lab * inner) / blur(inner), a Gaussian of sigma 2 * band_r (full-size
    # pixels) computed at a quarter of the full size, where it is smooth anyway.
    sigma = 2.0 * band_r
    factor = 4 if sigma >= 8 and min(height, width) >= 64 else 1
    blur_size = (max(1, width // factor), max(1, height // factor))
    inner_lab = cv2.resize(inner, (lab.shape[1], lab.shape[0]), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    weighted = np.dstack([lab, inner_lab]) * inner_lab[:, :, None]
    weighted[:, :, 3] = inner_lab
    blurred = cv2.GaussianBlur(cv2.resize(weighted, blur_size, interpolation=cv2.INTER_AREA), (0, 0), sigma / factor)
    nearby = _sample(blurred, cols, rows, (width, height))  # (N, 4): lab * weight, weight
    weight = nearby[:, 3]
    local = nearby[:, :3] / np.maximum(weight, 1e-6)[:, None]
    pixel = _sample(lab, cols, rows, (width, height))
    to_garment = np.linalg.norm(pixel - local, axis=1)
    to_background = np.linalg.norm(pixel - background, axis=1)
    # Only where garment and background differ clearly: a low-contrast (white-on-white) edge has no
    # ringing halo to trim, and its faint pixels would be lost to the background side.
    contrast = np.linalg.norm(local - background, axis=1)
    decided = (weight > LOCAL_COLOUR_MIN_WEIGHT) & (contrast > REFINE_MIN_CONTRAST)
    drop = decided & (to_garment > to_background)
    refined = mask.copy()
    refined[rows[drop], cols[drop]] = 0
    return refined


def _sample(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, full_size: tuple[int, int]) -> np.ndarray:
    """Bilinear values of `image` (a resampled copy of a `full_size` (width, height) image) at full-size
    pixels (xs, ys): (N, C) float32.

    The points go through `cv2.remap` as a near-square block (`sample_block_shape`), never one long row:
    remap refuses maps with a side of SHRT_MAX or more, and a mask's band on a 768x1024 canvas can hold
    far more points than that. Each output pixel of remap depends only on its own map entry, so the
    layout changes no value."""
    count = len(xs)
    if image.shape[0] >= REMAP_MAX_SIDE or image.shape[1] >= REMAP_MAX_SIDE:
        raise ValueError(f"cannot sample a {image.shape[1]}x{image.shape[0]} image: cv2.remap takes sides "
                         f"under {REMAP_MAX_SIDE}")
    channels = image.shape[2] if image.ndim == 3 else 1
    if count == 0:
        return np.zeros((0, channels), dtype=np.float32)
    rows, cols = sample_block_shape(count)
    scale_x, scale_y = image.shape[1] / full_size[0], image.shape[0] / full_size[1]
    map_x = np.zeros(rows * cols, dtype=np.float32)  # the block's unused tail samples pixel (0, 0): dropped
    map_y = np.zeros(rows * cols, dtype=np.float32)
    map_x[:count] = (xs.astype(np.float32) + 0.5) * scale_x - 0.5
    map_y[:count] = (ys.astype(np.float32) + 0.5) * scale_y - 0.5
    values = cv2.remap(image, map_x.reshape(rows, cols), map_y.reshape(rows, cols), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return values.reshape(rows * cols, channels)[:count]


def sample_block_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of the near-square block that holds `count` (> 0) points, each side under REMAP_MAX_SIDE."""
    cols = math.isqrt(count - 1) + 1  # ceil(sqrt(count))
    rows = -(-count // cols)
    if cols >= REMAP_MAX_SIDE:
        raise ValueError(f"{count} points do not fit a remap block of sides under {REMAP_MAX_SIDE}")
    return rows, cols


def _morph(mask: np.ndarray, op: int, radius: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    # OpenCV's default border: neutral for each step (outside never adds to a dilation nor eats into an
    # erosion), so a garment cut by the frame edge keeps its edge pixels.
    return cv2.morphologyEx(mask, op, kernel)


def background_pockets(mask: np.ndarray, plain: np.ndarray, lab: np.ndarray, background: np.ndarray,
                       band_r: int) -> np.ndarray:
    """The background pockets of a (filled) mask, as a 0/255 mask: the 4-connected regions of its `plain`
    pixels (those that look like the background) that the mask encloses, hold POCKET_MIN_AREA_FRACTION of
    the image or more, and whose surrounding garment (its non-plain pixels within POCKET_RING_FACTOR band
    radii, median colour read from `lab`, the image at COLOUR_SCALE) differs from the background by more
    than REFINE_MIN_CONTRAST."""
    height, width = mask.shape
    pockets = np.zeros_like(mask)
    candidates = cv2.bitwise_and(mask, plain)
    min_area = POCKET_MIN_AREA_FRACTION * mask.size
    if cv2.countNonZero(candidates) < min_area:
        return pockets
    _, labels, stats, _ = cv2.connectedComponentsWithStats(candidates, connectivity=4)
    ring_r = POCKET_RING_FACTOR * band_r
    ring_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_r + 1, 2 * ring_r + 1))
    for index in 1 + np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area):
        x, y, w, h = (int(v) for v in stats[index, :4])
        if x == 0 or y == 0 or x + w == width or y + h == height:
            continue  # on the frame's edge: beyond it is outside, so not enclosed
        x0, y0, x1, y1 = max(0, x - ring_r), max(0, y - ring_r), min(width, x + w + ring_r), min(height, y + h + ring_r)
        region = cv2.compare(labels[y0:y1, x0:x1], int(index), cv2.CMP_EQ)
        inside = mask[y0:y1, x0:x1]
        if cv2.countNonZero(cv2.bitwise_and(cv2.dilate(region, np.ones((3, 3), np.uint8)), cv2.bitwise_not(inside))):
            continue  # beside the outside: the outer band's business (step 4)
        surround = cv2.bitwise_and(cv2.dilate(region, ring_kernel), cv2.bitwise_not(plain[y0:y1, x0:x1]))
        ys, xs = np.nonzero(cv2.bitwise_and(surround, inside))
        if len(xs) == 0:
            continue
        colour = np.median(_sample(lab, xs + x0, ys + y0, (width, height)), axis=0)
        if float(np.linalg.norm(colour - background)) > REFINE_MIN_CONTRAST:
            pockets[y0:y1, x0:x1] |= region
    return pockets


def check_coverage(mask: np.ndarray) -> float:
    """The mask's foreground fraction; ItemError(NO_GARMENT) outside MIN_COVERAGE..MAX_COVERAGE."""
    coverage = float(np.count_nonzero(mask)) / mask.size
    if coverage < MIN_COVERAGE:
        raise ItemError(
            NO_GARMENT,
            f"the garment mask covers {coverage:.2%} of the image (< {MIN_COVERAGE:.0%}): "
            "nothing stands out from the background",
        )
    if coverage > MAX_COVERAGE:
        raise ItemError(
            NO_GARMENT,
            f"the garment mask covers {coverage:.2%} of the image (> {MAX_COVERAGE:.0%}): "
            "no plain background to separate the garment from",
        )
    return coverage


def encode_cloth_mask(mask: np.ndarray) -> bytes:
    """A (H, W) 0/255 (or bool) mask as a 1-channel (mode L) JPEG that thresholds back at >= 128."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {getattr(mask, 'shape', None)}")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    if mask.dtype != np.uint8 or not np.isin(mask, (0, 255)).all():
        raise ValueError("expected a uint8 mask holding only 0 and 255 (or a bool mask)")
    return encode_jpeg(mask, quality=CLOTH_MASK_JPEG_QUALITY)


def _check_rgb(cloth_rgb: np.ndarray) -> None:
    if not isinstance(cloth_rgb, np.ndarray) or cloth_rgb.ndim != 3 or cloth_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {getattr(cloth_rgb, 'shape', None)}")
    if cloth_rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array, got dtype {cloth_rgb.dtype}")


def postprocess_probability(probability: np.ndarray, threshold: float) -> np.ndarray:
    """A (H, W) garment probability map -> 0/255 mask: threshold, largest component, holes filled."""
    mask = np.where(probability >= threshold, 255, 0).astype(np.uint8)
    return fill_holes(largest_component(mask))


# ---------------------------------------------------------------------------------------------------
# U-Net option
# ---------------------------------------------------------------------------------------------------

UNET_THRESHOLD = 0.5  # the sigmoid's decision point, what a BCE-trained mask model is calibrated for
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the usual normalisation of an ImageNet-style encoder's input
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A checkpoint file that is not a ClothUNet state dict (wrong keys, wrong shapes, not a dict)."""


class UNetClothMasker:
    """Garment masks from a trained `ClothUNet` checkpoint (a state dict saved with torch.save).

    input_size is (height, width) of the network input; 320x240 keeps the 3:4 catalog aspect.
    """

    def __init__(self, checkpoint_path: str, device: str = "cpu", input_size: tuple[int, int] = (320, 240),
                 sha256: str | None = None):
        height, width = (int(v) for v in input_size)
        if height <= 0 or width <= 0 or height % 16 or width % 16:
            raise ValueError(f"input_size {input_size!r} must be positive multiples of 16 (height, width)")
        import torch

        from vitonhd_models.cloth_unet import ClothUNet

        self.input_size = (height, width)
        self.device = torch.device(device)
        if sha256 is None:  # the run hashed it already, for the fingerprint
            with open(checkpoint_path, "rb") as handle:
                sha256 = hashlib.sha256(handle.read()).hexdigest()
        digest = sha256
        self.model_id = f"{os.path.basename(checkpoint_path)}@sha256:{digest[:12]}"
        try:
            state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling refused or a corrupt file: say which file
            raise CheckpointError(
                f"cannot load checkpoint {checkpoint_path!r} as a state dict: {exc}"
            ) from exc
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]  # the usual {"state_dict": ...} wrapper
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f"checkpoint {checkpoint_path!r} holds a {type(state).__name__}, not a ClothUNet state dict"
            )
        model = ClothUNet()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            expected = set(model.state_dict())
            found = set(state)
            missing = sorted(expected - found)
            unexpected = sorted(found - expected)
            raise CheckpointError(
                f"checkpoint {checkpoint_path!r} does not match ClothUNet: "
                f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
                f"{unexpected[:5]}; details: {str(exc)[:500]}"
            ) from exc
        self.model = model.to(self.device).eval()
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def predict(self, cloth_rgb: np.ndarray) -> np.ndarray:
        """The garment probability at every pixel of the input: (H, W) float32 in 0..1."""
        import torch

        _check_rgb(cloth_rgb)
        height, width = cloth_rgb.shape[:2]
        in_h, in_w = self.input_size
        shrinking = in_h < height or in_w < width
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        small = cv2.resize(cloth_rgb, (in_w, in_h), interpolation=interpolation)
        tensor = torch.from_numpy(small).to(self.device).permute(2, 0, 1).unsqueeze(0).float() / 255.0
        tensor = (tensor - self._mean) / self._std
        with torch.inference_mode():
            probability = self.model(tensor)[0, 0].float().cpu().numpy()
        return cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)

    def mask(self, cloth_rgb: np.ndarray, *, check: bool = True) -> np.ndarray:
        """(H, W) uint8 0/255: probability >= 0.5, largest component, holes filled.

        Like the classical path, raises ItemError(NO_GARMENT) for an implausible coverage unless
        `check=False`.
        """
        mask = postprocess_probability(self.predict(cloth_rgb), UNET_THRESHOLD)
        if check:
            check_coverage(mask)
        return mask


# ---------------------------------------------------------------------------------------------------
# The cloth mask stage (declared in tasks/stages/registry.py)
# ---------------------------------------------------------------------------------------------------

CLASSICAL_MODEL_ID = "classical-v2"  # v2: background pockets left out (step 5); a new id reruns the stage


# Garments per U-Net call: its 320x240 inputs make 16 a small GPU batch; the resize back to 768x1024 and the
# post-processing run per garment on the CPU whatever the batch.
DEFAULT_CLOTH_MASK_BATCH_SIZE = 16


class ClothMaskSettings(Config):
    """The cloth mask stage's fields of `PreprocessConfig`."""

    cloth_mask_model: str | None = Field(None, description="URL of a ClothUNet checkpoint; None = classical")
    cloth_mask_batch_size: int = Field(
        DEFAULT_CLOTH_MASK_BATCH_SIZE, ge=1, description="Garments per U-Net cloth mask call (with cloth_mask_model)"
    )


def mask_weights_url(config) -> str | None:
    return config.cloth_mask_model


def is_classical(config) -> bool:
    return config.cloth_mask_model is None


def is_unet(config) -> bool:
    return config.cloth_mask_model is not None


def mask_params(config, weights: ModelFile | None) -> dict:
    return {"model": weights.sha256 if weights else CLASSICAL_MODEL_ID}


def _masker(env) -> UNetClothMasker:
    weights = env.weights.of("cloth_mask")
    return env.model(("cloth-unet", weights.sha256), lambda: UNetClothMasker(weights.path, sha256=weights.sha256))


def mask_cloth(env, item) -> np.ndarray:
    cloth = item.values["ingest"].image
    if env.weights.of("cloth_mask") is None:
        return cloth_mask_classical(cloth)
    return _masker(env).mask(cloth)


def encode_mask(mask: np.ndarray) -> tuple[bytes, ...]:
    return (encode_cloth_mask(mask),)


def mask_fields(env, mask: np.ndarray) -> dict:
    model = CLASSICAL_MODEL_ID if env.weights.of("cloth_mask") is None else _masker(env).model_id
    return {"model": model, "cloth_mask_coverage": float((mask > 0).mean())}


# ---------------------------------------------------------------------------------------------------
# The U-Net over batches (the batched cloth_mask variant: the model thread, on the GPU when there is one)
# ---------------------------------------------------------------------------------------------------
# The same steps as `UNetClothMasker.mask` on one garment (tests/test_cloth_mask.py holds the two to the
# same bits): each garment is resized to the network's input size on its own, so garments of any size
# stack into one (N, 3, in_h, in_w) batch without padding; one forward; each probability map goes back
# to its own garment's size and through the same threshold, post-processing and coverage check.


def unet_device() -> str:
    """Where the batched U-Net runs: CUDA when this process sees one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def unet_input(masker: UNetClothMasker, cloth_rgb: np.ndarray) -> np.ndarray:
    """One garment as the network sees it: (in_h, in_w, 3) uint8, resized as `UNetClothMasker.predict` does."""
    _check_rgb(cloth_rgb)
    height, width = cloth_rgb.shape[:2]
    in_h, in_w = masker.input_size
    interpolation = cv2.INTER_AREA if in_h < height or in_w < width else cv2.INTER_LINEAR
    return cv2.resize(cloth_rgb, (in_w, in_h), interpolation=interpolation)


def unet_forward(masker: UNetClothMasker, inputs: list[np.ndarray]) -> np.ndarray:
    """One forward over `unet_input`s: (N, in_h, in_w) float32 garment probabilities, on the host."""
    import torch

    # Contiguous NCHW, as the convolutions take `predict`'s one-image tensor: a batch left channels-last (what the
    # permute gives) runs other convolution kernels, whose sums round differently.
    batch = torch.from_numpy(np.stack(inputs)).to(masker.device).permute(0, 3, 1, 2).contiguous().float() / 255.0
    batch = (batch - masker._mean) / masker._std
    with torch.inference_mode():
        return masker.model(batch)[:, 0].float().cpu().numpy()


def unet_mask_of(probability: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A network-size probability map -> the garment's (H, W) 0/255 mask, coverage checked (NO_GARMENT)."""
    height, width = shape
    full = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = postprocess_probability(full, UNET_THRESHOLD)
    check_coverage(mask)
    return mask


def _as_item_error(error: Exception) -> ItemError:
    """An item's exception as `registry.per_item` records it."""
    from vitonhd_models.errors import STAGE_ERROR

    return error if isinstance(error, ItemError) else ItemError(STAGE_ERROR, f"{type(error).__name__}: {error}")


def masker_on(masker: UNetClothMasker, device: str) -> UNetClothMasker:
    """A twin of `masker` whose network and normalisation constants live on `device` (model id and input size
    kept; the original is left where it is)."""
    import copy

    import torch

    twin = copy.copy(masker)
    twin.device = torch.device(device)
    twin.model = copy.deepcopy(masker.model).to(twin.device).eval()
    twin._mean, twin._std = masker._mean.to(twin.device), masker._std.to(twin.device)
    return twin


def _batch_masker(env) -> UNetClothMasker:
    """The run's U-Net on `unet_device()`: the per-item path's masker (built from the run's weights), or its twin
    on the GPU, built once per thread."""
    masker = _masker(env)
    device = unet_device()
    if masker.device.type == device:
        return masker
    return env.model(("cloth-unet", masker.model_id, device), lambda: masker_on(masker, device))


def mask_cloth_batch(env, batch) -> list:
    """The U-Net cloth mask over a batch (the engine sizes batches): one mask, or one ItemError, per item.

    A garment whose input cannot be prepared, or whose mask fails its coverage check, is that item's
    ItemError; the others are masked as `mask_cloth` masks them one at a time. A failure of the forward
    itself raises (the engine then tries the items one at a time, and a GPU out of memory fails the shard).
    """
    masker = _batch_masker(env)
    results: list = [None] * len(batch)
    ready: list[tuple[int, tuple[int, int]]] = []
    inputs: list[np.ndarray] = []
    for index, item in enumerate(batch):
        try:
            cloth = item.values["ingest"].image
            inputs.append(unet_input(masker, cloth))
            ready.append((index, cloth.shape[:2]))
        except Exception as error:  # noqa: BLE001 - one bad garment must never fail its batch
            results[index] = _as_item_error(error)
    if inputs:
        for (index, shape), probability in zip(ready, unet_forward(masker, inputs)):
            try:
                results[index] = unet_mask_of(probability, shape)
            except Exception as error:  # noqa: BLE001
                results[index] = _as_item_error(error)
    return results
