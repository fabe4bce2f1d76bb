"""tasks/stages/normalize.py: decoding (modes, EXIF, errors), fitting onto 768x1024, deterministic encoding.

Every input is generated here with PIL/numpy; images stay small so the file runs in seconds.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

import tasks.stages.normalize as normalize
from tasks.stages.image_codec import encode_jpeg, encode_png
from tasks.stages.normalize import (
    FIT_METHODS,
    FitRecord,
    decode_image,
    estimate_background_rgb,
    fit_to_canvas,
)
from vitonhd_models import errors
from vitonhd_models.contract import IMAGE_HEIGHT, IMAGE_WIDTH
from vitonhd_models.errors import ItemError

CANVAS_SHAPE = (IMAGE_HEIGHT, IMAGE_WIDTH, 3)


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _decode_array(data: bytes, **kwargs) -> np.ndarray:
    image = decode_image(data, **kwargs)
    assert image.mode == "RGB", f"decode_image returned mode {image.mode}, expected RGB"
    return np.asarray(image)


def _error_code(data: bytes, **kwargs) -> str:
    with pytest.raises(ItemError) as info:
        decode_image(data, **kwargs)
    return info.value.code


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------
# decode_image: EXIF and modes
# ---------------------------------------------------------------------------------------------------


def test_exif_orientation_6_rotates_to_portrait():
    # Stored 200 wide x 100 high, left half red, right half blue; orientation 6 = rotate 90 deg clockwise.
    array = np.zeros((100, 200, 3), dtype=np.uint8)
    array[:, :100] = (255, 0, 0)
    array[:, 100:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _save(Image.fromarray(array), "JPEG", quality=95, exif=exif.tobytes())

    image = decode_image(data)

    assert image.size == (100, 200), f"orientation 6 should give a 100x200 portrait, got {image.size}"
    out = np.asarray(image).astype(int)
    top, bottom = out[:90].mean(axis=(0, 1)), out[110:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60, f"the stored left (red) half should be on top, top mean {top}"
    assert bottom[2] > 200 and bottom[0] < 60, f"the stored right (blue) half should be below, got {bottom}"


def test_cmyk_decodes_to_rgb_colours():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # no cyan, full magenta+yellow = red
    out = _decode_array(_save(cmyk, "TIFF"))
    assert out.shape == (64, 64, 3)
    assert tuple(out[32, 32]) == (255, 0, 0), f"CMYK (0,255,255,0) should be red, got {tuple(out[32, 32])}"


def test_greyscale_l_decodes_to_equal_channels():
    out = _decode_array(_save(Image.new("L", (64, 64), 100), "PNG"))
    assert tuple(out[10, 10]) == (100, 100, 100), f"L 100 should be grey 100, got {tuple(out[10, 10])}"


def test_la_transparency_is_composited_over_white():
    la = np.zeros((64, 64, 2), dtype=np.uint8)  # black everywhere
    la[:, 32:, 1] = 255  # right half opaque, left half fully transparent
    out = _decode_array(_save(Image.fromarray(la, mode="LA"), "PNG"))
    assert tuple(out[10, 5]) == (255, 255, 255), f"transparent LA should be white, got {tuple(out[10, 5])}"
    assert tuple(out[10, 60]) == (0, 0, 0), f"opaque black LA should stay black, got {tuple(out[10, 60])}"


def test_rgba_transparency_is_composited_over_white():
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, :, 0] = 255  # red
    rgba[:, :20, 3] = 0  # transparent
    rgba[:, 20:40, 3] = 128  # half
    rgba[:, 40:, 3] = 255  # opaque
    out = _decode_array(_save(Image.fromarray(rgba, mode="RGBA"), "PNG")).astype(int)
    assert tuple(out[5, 5]) == (255, 255, 255), f"alpha 0 should be white (not black), got {tuple(out[5, 5])}"
    assert tuple(out[5, 50]) == (255, 0, 0), f"opaque red should stay red, got {tuple(out[5, 50])}"
    half = out[5, 30]
    assert half[0] == 255 and 120 <= half[1] <= 135, f"half-transparent red over white is pink, got {half}"


def test_palette_decodes_to_its_colours():
    index = np.zeros((64, 64), dtype=np.uint8)
    index[:, 32:] = 1
    image = Image.fromarray(index, mode="L").convert("P")
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    out = _decode_array(_save(image, "PNG"))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 63]) == (200, 100, 50), (
        f"palette colours not applied: {tuple(out[0, 0])}, {tuple(out[0, 63])}"
    )


def test_palette_transparency_is_composited_over_white():
    index = np.zeros((64, 64), dtype=np.uint8)
    index[:, 32:] = 1
    image = Image.fromarray(index, mode="L").convert("P")
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    data = _save(image, "PNG", transparency=0)  # index 0 (black) is transparent
    out = _decode_array(data)
    assert tuple(out[0, 0]) == (255, 255, 255), f"transparent index should be white, got {tuple(out[0, 0])}"
    assert tuple(out[0, 63]) == (0, 0, 255), f"opaque index should keep its colour, got {tuple(out[0, 63])}"


def test_16_bit_greyscale_ramp_scales_to_full_8_bit_range():
    ramp = np.round(np.linspace(0, 65535, 256)).astype(np.uint16)
    image = Image.fromarray(np.tile(ramp, (64, 1)))
    assert image.mode.startswith("I;16"), f"test setup: expected a 16-bit image, got {image.mode}"
    out = _decode_array(_save(image, "PNG"))[0, :, 0].astype(int)
    assert out[0] == 0 and out[-1] == 255, f"16-bit 0..65535 should map to 0..255, got {out[0]}..{out[-1]}"
    assert np.all(np.diff(out) >= 0), "the 16-bit ramp should stay monotonic"
    assert 120 <= out[128] <= 135, f"the ramp's middle should be mid-grey (not clipped), got {out[128]}"


@pytest.mark.parametrize(
    "values",
    [
        np.linspace(-1.0, 1.0, 256, dtype=np.float32),  # F, outside 0..255 on both ends
        np.linspace(-1000, 100000, 256).astype(np.int32),  # I, far beyond 16 bits
    ],
    ids=["F", "I"],
)
def test_float_and_32_bit_greyscale_stretch_their_range(values):
    image = Image.fromarray(np.tile(values, (64, 1)))
    out = _decode_array(_save(image, "TIFF"))[0, :, 0].astype(int)
    assert out[0] == 0 and out[-1] == 255, f"{image.mode} range should map to 0..255, got {out[0]}..{out[-1]}"
    assert np.all(np.diff(out) >= 0), f"the {image.mode} ramp should stay monotonic"


def test_one_bit_image_decodes_to_black_and_white():
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(bool)
    out = _decode_array(_save(Image.fromarray(checker).convert("1"), "PNG"))
    assert set(np.unique(out)) == {0, 255}, f"a 1-bit image should give only 0 and 255, got {np.unique(out)}"


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow has no WebP codec")
def test_webp_decodes():
    array = np.zeros((64, 96, 3), dtype=np.uint8)
    array[:] = (30, 140, 220)
    out = _decode_array(_save(Image.fromarray(array), "WEBP", lossless=True))
    assert out.shape == (64, 96, 3) and tuple(out[5, 5]) == (30, 140, 220)


# ---------------------------------------------------------------------------------------------------
# decode_image: errors
# ---------------------------------------------------------------------------------------------------


def test_empty_bytes_is_empty_file():
    assert _error_code(b"") == errors.EMPTY_FILE


def test_text_is_not_an_image():
    assert _error_code(b"sku,name,price\n123,shirt,19.99\n" * 20) == errors.NOT_AN_IMAGE


def test_random_bytes_are_not_an_image():
    assert _error_code(np.random.default_rng(1).bytes(4096)) == errors.NOT_AN_IMAGE


def test_truncated_jpeg_is_truncated():
    data = _save(Image.fromarray(_noise(128, 128)), "JPEG", quality=90)
    assert _error_code(data[: len(data) // 2]) == errors.TRUNCATED


def test_truncated_png_is_truncated():
    data = _save(Image.fromarray(_noise(128, 128)), "PNG")
    assert _error_code(data[: len(data) // 2]) == errors.TRUNCATED


def test_one_pixel_image_is_too_small():
    assert _error_code(_save(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG")) == errors.TOO_SMALL


def _png_claiming_size(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR claims width x height (CRC fixed): a bomb, as far as headers go."""
    data = bytearray(_save(Image.new("L", (64, 64), 0), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize(
    "size",
    [(20000, 20000), (9000, 8000)],
    ids=["beyond-PIL-own-limit", "beyond-our-limit-only"],
)
def test_header_claiming_too_many_pixels_is_a_bomb(size):
    assert _error_code(_png_claiming_size(*size)) == errors.DECOMPRESSION_BOMB


def test_max_pixels_is_checked_before_decoding():
    data = _save(Image.new("RGB", (200, 200)), "PNG")
    assert _error_code(data, max_pixels=200 * 200 - 1) == errors.DECOMPRESSION_BOMB


def test_mode_pil_cannot_convert_is_unsupported_mode(monkeypatch):
    data = _save(Image.new("L", (64, 64), 7), "PNG")

    def refuse(self, mode=None, *args, **kwargs):
        raise ValueError(f"conversion from {self.mode} to {mode} not supported")  # what PIL says

    monkeypatch.setattr(Image.Image, "convert", refuse)
    assert _error_code(data) == errors.UNSUPPORTED_MODE


# ---------------------------------------------------------------------------------------------------
# Background and canvas fitting
# ---------------------------------------------------------------------------------------------------


def _framed(height: int, width: int, background, subject, margin: float = 0.2) -> np.ndarray:
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[:] = background
    y, x = int(height * margin), int(width * margin)
    array[y : height - y, x : width - x] = subject
    return array


def test_background_is_the_border_colour():
    image = _framed(200, 150, (12, 200, 31), (250, 0, 0))
    assert estimate_background_rgb(image) == (12, 200, 31)


def test_pad_square_gives_canvas_with_background_padding_rows():
    background = (10, 200, 30)
    image = _framed(1000, 1000, background, (200, 40, 40))

    out, record = fit_to_canvas(image, "pad")

    assert out.shape == CANVAS_SHAPE and out.dtype == np.uint8, f"got {out.shape} {out.dtype}"
    assert record.scale == pytest.approx(0.768) and record.offset_x == 0 and record.offset_y == 128, record
    assert record.background_rgb == background
    for rows, name in ((out[:128], "top"), (out[896:], "bottom")):
        assert np.all(rows == np.array(background, dtype=np.uint8)), f"{name} padding is not the background"
    assert tuple(out[512, 384]) == (200, 40, 40), "the subject should sit in the middle"


def test_pad_tall_image_pads_columns():
    image = _framed(1000, 300, (255, 255, 255), (0, 0, 0))
    out, record = fit_to_canvas(image, "pad")
    assert out.shape == CANVAS_SHAPE
    new_w = round(300 * record.scale)
    assert record.offset_x == (IMAGE_WIDTH - new_w) // 2 and record.offset_y == 0, record
    assert np.all(out[:, : int(record.offset_x)] == 255), "the left padding should be the white background"


def test_crop_keeps_the_person_box_inside_the_output():
    # A wide frame with the "person" far to the right: a centre crop would cut it off.
    image = np.full((1000, 2000, 3), 128, dtype=np.uint8)
    box = (1500, 100, 1700, 900)
    image[box[1] : box[3], box[0] : box[2]] = (255, 0, 0)

    out, record = fit_to_canvas(image, "crop", person_box=box)

    assert out.shape == CANVAS_SHAPE
    for x, y in ((box[0], box[1]), (box[2], box[3])):
        ox, oy = record.to_output(x, y)
        assert 0 <= ox <= IMAGE_WIDTH and 0 <= oy <= IMAGE_HEIGHT, f"box corner {(x, y)} maps to {(ox, oy)}"
    red = np.all(out == (255, 0, 0), axis=2).sum()
    expected = (box[2] - box[0]) * (box[3] - box[1]) * record.scale**2
    assert red >= 0.95 * expected, f"only {red} of ~{expected:.0f} box pixels made it into the crop"


def test_crop_without_box_is_a_centre_crop():
    image = np.zeros((1000, 2000, 3), dtype=np.uint8)
    image[:, 1000:] = 255  # left half black, right half white
    out, record = fit_to_canvas(image, "crop")
    assert record.scale == pytest.approx(768 / 750)
    assert record.to_output(625, 0) == pytest.approx((0.0, 0.0)), "a centred 750x1000 window starts at x=625"
    assert out[:, :300].max() < 10 and out[:, -300:].min() > 245, "the centre crop should hold both halves"


def test_crop_box_wider_than_any_window_is_kept_with_padding():
    image = np.full((400, 1200, 3), 240, dtype=np.uint8)
    box = (100, 50, 1100, 350)  # 1000 wide: no 3:4 window inside a 400-high image holds it
    image[box[1] : box[3], box[0] : box[2]] = (0, 0, 255)
    out, record = fit_to_canvas(image, "crop", person_box=box)
    assert out.shape == CANVAS_SHAPE
    assert record.background_rgb == (240, 240, 240), "the window reaching past the image needs a fill colour"
    x0, y0 = record.to_output(box[0], box[1])
    x1, y1 = record.to_output(box[2], box[3])
    assert 0 <= x0 and x1 <= IMAGE_WIDTH and 0 <= y0 and y1 <= IMAGE_HEIGHT, (x0, y0, x1, y1)


@pytest.mark.parametrize("method", FIT_METHODS)
def test_canvas_sized_input_is_returned_bit_exact(method):
    image = _noise(IMAGE_HEIGHT, IMAGE_WIDTH, seed=3)
    out, record = fit_to_canvas(image, method)
    assert out.dtype == np.uint8 and np.array_equal(out, image), f"{method} changed a 768x1024 input"
    assert out is not image, "the output should not alias the input"
    assert (record.scale, record.offset_x, record.offset_y, record.background_rgb) == (1.0, 0.0, 0.0, None)


def test_unknown_fit_method_is_rejected():
    with pytest.raises(ValueError, match="unknown fit method"):
        fit_to_canvas(np.zeros((100, 100, 3), dtype=np.uint8), "stretch")


def test_fit_record_maps_to_the_canvas_and_serialises():
    record = FitRecord("pad", 0.5, 10.0, 20.0, 400, 300, (1, 2, 3))
    assert record.to_output(123.0, 45.0) == pytest.approx((123.0 * 0.5 + 10.0, 45.0 * 0.5 + 20.0))
    as_dict = record.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["background_rgb"] == [1, 2, 3] and as_dict["method"] == "pad"


# ---------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------


def test_encode_jpeg_is_deterministic_rgb_without_metadata():
    image = _noise(64, 48, seed=4)
    first, second = encode_jpeg(image), encode_jpeg(image)
    assert first == second, "the same array should encode to the same bytes"
    decoded = Image.open(io.BytesIO(first))
    assert decoded.format == "JPEG" and decoded.mode == "RGB" and decoded.size == (48, 64)
    assert not decoded.getexif() and "icc_profile" not in decoded.info, "no EXIF or ICC metadata expected"


def test_encode_png_round_trips_exactly():
    for array in (_noise(40, 30, seed=5), _noise(40, 30, channels=1, seed=6)[:, :, 0]):
        data = encode_png(array)
        assert data == encode_png(array), "PNG encoding should be deterministic"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), array)


def test_encode_png_with_palette_writes_p_mode_indices():
    index = np.arange(20, dtype=np.uint8).reshape(4, 5)
    palette = [channel for i in range(20) for channel in (i * 10, 0, 0)]
    decoded = Image.open(io.BytesIO(encode_png(index, palette=palette)))
    assert decoded.mode == "P", f"a palette PNG should read back as P, got {decoded.mode}"
    assert np.array_equal(np.asarray(decoded), index), "the indices should survive unchanged"


@pytest.mark.parametrize("width, height", [(451, 300), (300, 451), (1001, 999), (769, 1023), (3, 2000)])
def test_pad_handles_sizes_whose_scaled_side_rounds_up(width, height):
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    canvas, record = fit_to_canvas(image, method="pad")
    assert canvas.shape == (1024, 768, 3), f"{width}x{height} gave {canvas.shape}"
    assert record.method == "pad"


def test_a_non_image_is_reported_as_such_even_after_ultralytics_patched_pil():
    """Ultralytics replaces PIL.Image.open on import (HEIF support); our error codes must not change."""
    import ultralytics  # noqa: F401  (the import applies the patch)

    assert _error_code(b"plain text, not a photo\n" * 4) == errors.NOT_AN_IMAGE


# ---------------------------------------------------------------------------------------------------
# Extreme sources the config admits (64 MP: 24000x200, 200x40000): a canvas or a clear error, never a crash
# ---------------------------------------------------------------------------------------------------

# Ingest with fit=crop on a WIDTHxHEIGHT source holding PERSON (a photo) in its middle, in a process of its own:
# a crash in native code (MediaPipe, OpenCV) shows as its exit status instead of killing pytest. Prints the canvas
# shape and fit, or the ItemError.
_CROP_INGEST = """
import io, json, sys
from types import SimpleNamespace
from PIL import Image
from tasks.stages.model_cache import Weights
from tasks.stages.normalize import ingest
from tasks.stages.registry import PreprocessConfig, StageEnv
from vitonhd_models.errors import ItemError

width, height, person = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
source = Image.new("RGB", (width, height), (235, 235, 235))
photo = Image.open(person).convert("RGB")
short = min(width, height)
photo = photo.resize((short, short * 4 // 3) if width < height else (short * 3 // 4, short))
source.paste(photo, ((width - photo.width) // 2, (height - photo.height) // 2))
buffer = io.BytesIO()
source.save(buffer, "PNG", compress_level=1)
env = StageEnv(PreprocessConfig(catalog="/nowhere/catalog", out="/nowhere/out", fit="crop"), Weights())
try:
    result = ingest(env, SimpleNamespace(source=buffer.getvalue()), person=True)
    print(json.dumps({"canvas": list(result.image.shape), "fit": result.fit.to_dict()}))
except ItemError as error:
    print(json.dumps({"error": error.code, "message": error.message}))
"""


@pytest.mark.parametrize("width, height", [(24000, 200), (200, 40000)])
def test_crop_of_an_extreme_source_gives_a_canvas_or_a_clear_error_never_a_crash(samples_dir, width, height):
    person = sorted((samples_dir / "image").glob("*.jpg"))[0]
    done = subprocess.run([sys.executable, "-c", _CROP_INGEST, str(width), str(height), str(person)],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
    how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
    assert done.returncode == 0, (
        f"ingest (fit=crop) of a {width}x{height} source killed its process ({how}): {done.stderr[-1000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in result:
        assert result["error"] not in (errors.STAGE_ERROR, errors.WORKER_CRASHED), f"not a clear error: {result}"
    else:
        assert result["canvas"] == list(CANVAS_SHAPE), f"not a canvas: {result}"
        fit = result["fit"]
        assert (fit["method"], fit["source_width"], fit["source_height"]) == ("crop", width, height), fit


@pytest.mark.parametrize("width, height", [(24000, 200), (200, 40000)])
def test_pad_of_an_extreme_source_puts_all_of_it_on_the_canvas(width, height):
    image = np.full((height, width, 3), 235, np.uint8)
    image[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (30, 60, 90)
    out, record = fit_to_canvas(image, "pad")
    assert out.shape == CANVAS_SHAPE, f"{width}x{height} gave {out.shape}"
    x0, y0, x1, y1 = record.content_box()
    assert (x1 - x0, y1 - y0) == ((IMAGE_WIDTH, pytest.approx(200 * IMAGE_WIDTH / 24000, abs=1)) if width > height
                                  else (pytest.approx(200 * IMAGE_HEIGHT / 40000, abs=1), IMAGE_HEIGHT)), (
        f"the whole source, scaled to fit: {x0, y0, x1, y1}")


def test_a_crop_window_over_the_size_limit_is_built_from_the_reduced_source_with_the_same_placement(monkeypatch):
    # 3200x300 with a box as wide as the photo: the window is 3520x4693, past the image top and bottom.
    coarse = np.random.default_rng(5).integers(0, 255, (30, 320, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((3200, 300), Image.Resampling.BICUBIC))
    box = (0, 0, 3200, 300)
    direct, direct_fit = fit_to_canvas(image, "crop", person_box=box)
    monkeypatch.setattr(normalize, "MAX_CROP_WINDOW_PIXELS", 1_000_000)  # the window is 16.5 MP: reduced 2x
    reduced, reduced_fit = fit_to_canvas(image, "crop", person_box=box)
    assert reduced_fit == direct_fit, "the placement (the FitRecord) does not depend on how the window is built"
    difference = np.abs(reduced.astype(int) - direct.astype(int))
    assert difference.mean() < 0.1 and difference.max() <= 8, (
        f"the reduced window's canvas differs from the whole one's: mean {difference.mean():.3f}, max {difference.max()}")


def test_a_crop_window_reaching_far_past_an_extreme_source_is_not_built_whole():
    # A box as wide as a 24000x200 source: the window is 26400x35200 (2.8 GB built whole).
    image = np.full((200, 24000, 3), 235, np.uint8)
    image[50:150, 2000:22000] = (30, 60, 90)
    tracemalloc.start()
    try:
        out, record = fit_to_canvas(image, "crop", person_box=(0, 0, 24000, 200))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == CANVAS_SHAPE and record.background_rgb == (235, 235, 235), record
    assert peak < 200_000_000, f"{peak / 1e6:.0f} MB allocated for a 768x1024 canvas"
    ys, xs = np.nonzero(out.astype(int).sum(axis=2) < 600)  # the dark band, blurred edges included
    found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    expected = (*record.to_output(2000, 50), *record.to_output(22000, 150))
    assert np.abs(np.subtract(found, expected)).max() <= 2, f"the content is at {found}, the fit says {expected}"
