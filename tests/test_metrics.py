"""Evaluation metrics on uint8 RGB images: grayscale SSIM (contract §2.8), masked L1, summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitonhd_models.metrics import masked_l1_uint8, ssim_gray, summarise


def _image(seed: int = 0, size: tuple[int, int] = (24, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_ssim_identical_images_is_one():
    img = _image()
    assert ssim_gray(img, img.copy()) == pytest.approx(1.0), "identical images must give SSIM 1"


def test_ssim_noisy_image_is_below_one():
    img = _image()
    noise = np.random.default_rng(1).integers(-40, 41, img.shape)
    noisy = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
    value = ssim_gray(noisy, img)
    assert value < 1.0, f"noise should lower SSIM, got {value}"


def test_ssim_compares_grayscale_only():
    # Pure red (255, 0, 0) and a gray of the same PIL luma (76) are the same in 'L'.
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    gray = np.full((16, 16, 3), 76, np.uint8)
    assert ssim_gray(red, gray) == pytest.approx(1.0), "SSIM is computed on PIL grayscale"


def test_ssim_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        ssim_gray(_image(size=(24, 16)), _image(size=(16, 24)))


def test_ssim_rejects_non_uint8_rgb():
    with pytest.raises(ValueError, match="uint8"):
        ssim_gray(_image().astype(np.float32), _image())


def test_masked_l1_identical_images_is_zero():
    img = _image()
    assert masked_l1_uint8(img, img.copy()) == 0.0, "identical images must give L1 0"


def test_masked_l1_whole_image_in_unit_range():
    black = np.zeros((2, 2, 3), np.uint8)
    white = np.full((2, 2, 3), 255, np.uint8)
    assert masked_l1_uint8(black, white) == pytest.approx(1.0), "black vs white is 1 in [0, 1] units"


def test_masked_l1_counts_only_mask_pixels():
    pred = np.zeros((2, 2, 3), np.uint8)
    target = np.full((2, 2, 3), 255, np.uint8)
    target[0, 0] = (51, 102, 153)  # the only pixel inside the mask
    mask = np.array([[True, False], [False, False]])
    expected = (51 + 102 + 153) / 3 / 255  # 0.4
    got = masked_l1_uint8(pred, target, mask)
    assert got == pytest.approx(expected), f"expected {expected} from the masked pixel only, got {got}"


def test_masked_l1_empty_mask_is_nan():
    img = _image()
    value = masked_l1_uint8(img, img, np.zeros(img.shape[:2], bool))
    assert math.isnan(value), f"an empty mask must give NaN, got {value}"


def test_masked_l1_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        masked_l1_uint8(_image(size=(4, 4)), _image(size=(4, 5)))


def test_masked_l1_rejects_wrong_mask_shape():
    img = _image(size=(4, 4))
    with pytest.raises(ValueError, match="mask must be"):
        masked_l1_uint8(img, img, np.ones((4, 5), bool))


def test_summarise_ignores_nans():
    got = summarise([1.0, math.nan, 3.0])
    assert got == {"count": 2, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}, f"got {got}"


def test_summarise_all_nan_or_empty():
    for values in ([], [math.nan]):
        got = summarise(values)
        assert got["count"] == 0, f"{values}: count should be 0, got {got['count']}"
        assert all(math.isnan(got[k]) for k in ("mean", "std", "min", "max")), f"{values}: got {got}"
