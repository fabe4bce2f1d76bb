"""Evaluation metrics on uint8 RGB images (H, W, 3), and a NaN-aware summary of per-image values.

SSIM follows HR-VITON's `evaluate.py` (contract §2.8): grayscale via PIL, skimage's
`structural_similarity` with data_range 255, Gaussian weights and population covariance.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

# 8-bit images: the SSIM data range and the divisor that puts L1 into [0, 1] units.
UINT8_MAX = 255


def _check_rgb_pair(pred_rgb: np.ndarray, target_rgb: np.ndarray) -> None:
    for name, a in (("pred_rgb", pred_rgb), ("target_rgb", target_rgb)):
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"{name} must be a uint8 (H, W, 3) RGB image, got {a.dtype} {a.shape}")
    if pred_rgb.shape != target_rgb.shape:
        raise ValueError(f"pred_rgb and target_rgb differ in shape: {pred_rgb.shape} vs {target_rgb.shape}")


def ssim_gray(pred_rgb: np.ndarray, target_rgb: np.ndarray) -> float:
    """SSIM of the two images converted to grayscale with PIL `convert('L')` (contract §2.8).

    Images need at least 11 pixels per side (the 11-tap Gaussian window); skimage raises otherwise.
    """
    _check_rgb_pair(pred_rgb, target_rgb)
    pred = np.asarray(Image.fromarray(pred_rgb).convert("L"))
    target = np.asarray(Image.fromarray(target_rgb).convert("L"))
    return float(
        structural_similarity(
            pred, target, data_range=UINT8_MAX, gaussian_weights=True, use_sample_covariance=False
        )
    )


def masked_l1_uint8(pred_rgb: np.ndarray, target_rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference in [0, 1] units over the pixels of `mask` (H, W) and all channels.

    mask None means the whole image; an empty mask gives NaN (no pixels, no value).
    """
    _check_rgb_pair(pred_rgb, target_rgb)
    diff = np.abs(pred_rgb.astype(np.int16) - target_rgb.astype(np.int16))
    if mask is not None:
        if mask.shape != pred_rgb.shape[:2]:
            raise ValueError(f"mask must be (H, W) = {pred_rgb.shape[:2]}, got {mask.shape}")
        diff = diff[mask.astype(bool)]
    if diff.size == 0:
        return math.nan
    return float(diff.mean() / UINT8_MAX)


def summarise(values: list[float]) -> dict:
    """{count, mean, std, min, max} over the non-NaN values; std is the population std (ddof 0).

    count is the number of non-NaN values; with none, the statistics are NaN.
    """
    kept = np.asarray(values, dtype=np.float64)
    kept = kept[~np.isnan(kept)]
    if kept.size == 0:
        return {"count": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {
        "count": int(kept.size),
        "mean": float(kept.mean()),
        "std": float(kept.std()),
        "min": float(kept.min()),
        "max": float(kept.max()),
    }
