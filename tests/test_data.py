"""The data module and the pipeline glue: the tensors of contract §1.8, from our layout and VITON-HD's."""

from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tasks.infra.store import Store
from tasks.infra.weight_cache import local_copy
from vitonhd_models import contract
from vitonhd_models.checkpoints import Architecture, load_networks
from vitonhd_models.data import (
    LAYOUT_OURS,
    LAYOUT_VITONHD,
    PairDataset,
    collate_pairs,
    detect_split_layout,
    group_onehot,
    load_pair,
    merge_13_to_7,
    parse_pairs,
    read_pairs,
)
from vitonhd_models.errors import BAD_INPUT, MISSING_INPUT, MISSING_KEYPOINTS, ItemError
from vitonhd_models.pairs import pair_fields
from vitonhd_models.pipeline import (
    binary_noise,
    gaussian_blur,
    gaussian_kernel_2d,
    gmm_input,
    misalignment,
    parse7_from_seg,
    seed_everything,
    seg_input,
    to_uint8_images,
    try_on,
)

SMALL = (512, 384)
TINY = Architecture(
    load_height=512, load_width=384, seg_ngf=4, gmm_ngf=4, alias_ngf=4, alias_norm_hidden=8
)  # fmt: skip


@pytest.fixture(scope="module")
def split(tryon_dataset) -> Store:
    return tryon_dataset.child("train")


@pytest.fixture(scope="module")
def first_pair(tryon_dataset) -> tuple[str, str]:
    return read_pairs(tryon_dataset, "train")[0]


@pytest.fixture(scope="module")
def sample(split, first_pair) -> dict:
    return load_pair(split, LAYOUT_OURS, *first_pair, targets=True)


# ---- Pairs and layout ------------------------------------------------------------------------------


def test_pairs_file_lines_are_person_then_cloth():
    assert parse_pairs("a_00.jpg b_00.jpg\n\nc_00.jpg  d_00.jpg\n") == [("a_00.jpg", "b_00.jpg"), ("c_00.jpg", "d_00.jpg")]


def test_a_malformed_pairs_line_names_its_line_number():
    with pytest.raises(ValueError, match="pairs:2"):
        parse_pairs("a.jpg b.jpg\na.jpg\n", "pairs")


@pytest.mark.parametrize(
    "line, extension, fields",
    [
        (" a.jpg\tb.jpg \n", ".jpg", ("a.jpg", "b.jpg")),
        ("a b", None, ("a", "b")),
        ("a b", ".jpg", None),
        ("a.jpg b.jpg c.jpg", ".jpg", None),
        ("", ".jpg", None),
    ],
    ids=["whitespace", "any-names", "not-jpg", "three-fields", "blank"],
)
def test_a_pairs_line_is_two_names_or_nothing(line, extension, fields):
    assert pair_fields(line, extension) == fields


def test_a_pairs_file_name_names_its_split():
    assert contract.pairs_file_split(contract.pairs_file_name("train")) == "train"
    assert [contract.pairs_file_split(name) for name in ("_pairs.txt", "pairs.csv", "test_pairs.txt.bak")] == [None] * 3


def test_our_dataset_is_detected_as_our_layout(split):
    assert detect_split_layout(split) == LAYOUT_OURS


# ---- Tensors of one pair (contract §1.1, §1.8) --------------------------------------------------------


def test_a_sample_has_the_official_keys_shapes_and_ranges(sample):
    shapes = {
        "img": (3, 1024, 768), "img_agnostic": (3, 1024, 768), "parse_agnostic": (13, 1024, 768),
        "pose": (3, 1024, 768), "cloth": (3, 1024, 768), "cloth_mask": (1, 1024, 768),
        "parse": (13, 1024, 768), "parse_cloth": (1, 1024, 768),
    }  # fmt: skip
    for key, shape in shapes.items():
        assert tuple(sample[key].shape) == shape, f"{key}: {tuple(sample[key].shape)} != {shape}"
        assert sample[key].dtype == torch.float32, key
    for key in ("img", "img_agnostic", "pose", "cloth"):
        assert sample[key].min() >= -1.0 and sample[key].max() <= 1.0, f"{key} is not in [-1, 1]"
    assert set(sample["cloth_mask"].unique().tolist()) == {0.0, 1.0}


def test_parse_maps_are_one_hot_over_the_13_groups(sample):
    for key in ("parse", "parse_agnostic"):
        assert torch.equal(sample[key].sum(0), torch.ones(1024, 768)), f"{key} is not one-hot per pixel"


def test_parse_agnostic_has_no_upper_clothes_left(sample):
    assert sample["parse"][3].sum() > 0, "the fixture person wears upper clothes"
    assert sample["parse_agnostic"][3].sum() == 0, "13-group 'upper' must be empty after the agnostic step"


def test_the_image_tensor_is_the_jpeg_scaled_to_minus_one_one(sample, split, first_pair, tmp_path):
    with Image.open(local_copy(split, f"image/{first_pair[0]}", str(tmp_path))) as image:
        rgb = np.asarray(image.convert("RGB"))
    expected = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    assert torch.allclose(sample["img"], expected)


def test_the_cloth_mask_is_thresholded_at_128(sample, split, first_pair):
    mask = np.asarray(Image.open(split.path("cloth-mask", first_pair[1])))
    assert torch.equal(sample["cloth_mask"][0], torch.from_numpy((mask >= 128).astype(np.float32)))


def test_smaller_sizes_resize_images_and_keep_labels_one_hot(split, first_pair):
    small = load_pair(split, LAYOUT_OURS, *first_pair, size_hw=SMALL, targets=True)
    assert tuple(small["img"].shape) == (3, *SMALL)
    assert torch.equal(small["parse_agnostic"].sum(0), torch.ones(SMALL))


def test_group_onehot_follows_the_13_group_table():
    labels = np.array([[0, 10, 2, 13], [5, 7, 19, 11]], dtype=np.uint8)
    groups = group_onehot(labels).argmax(0)
    assert groups.tolist() == [[0, 0, 1, 2], [3, 3, 10, 12]]


def test_merge_13_to_7_follows_the_generator_table():
    groups13 = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    onehot = torch.nn.functional.one_hot(groups13, 13).permute(0, 2, 1)[..., None].float()  # (1, 13, 13, 1)
    merged = merge_13_to_7(onehot).argmax(1)[0, :, 0].tolist()
    assert merged == [0, 3, 1, 2, 1, 4, 5, 1, 1, 1, 1, 1, 6]


# ---- Bad pairs --------------------------------------------------------------------------------------


@pytest.fixture
def broken_copy(tryon_dataset, tmp_path) -> Store:
    shutil.copytree(tryon_dataset.path("train"), tmp_path / "train")
    return Store(str(tmp_path)).child("train")


def test_a_missing_file_is_a_missing_input_error(broken_copy, first_pair):
    stem = first_pair[0][:-4]
    broken_copy.remove(f"{contract.DIR_POSE_IMG}/{stem}_rendered.png")
    with pytest.raises(ItemError) as caught:
        load_pair(broken_copy, LAYOUT_OURS, *first_pair)
    assert caught.value.code == MISSING_INPUT and "_rendered.png" in caught.value.message


def test_an_rgb_parse_map_is_a_bad_input_error(broken_copy, first_pair):
    stem = first_pair[0][:-4]
    path = broken_copy.path(contract.DIR_PARSE, f"{stem}.png")
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(ItemError) as caught:
        load_pair(broken_copy, LAYOUT_OURS, *first_pair)
    assert caught.value.code == BAD_INPUT


def test_keypoints_without_hips_are_a_missing_keypoints_error(broken_copy, first_pair):
    stem = first_pair[0][:-4]
    rel = f"{contract.DIR_POSE_JSON}/{stem}_keypoints.json"
    document = json.loads(broken_copy.read_text(rel))
    flat = document["people"][0]["pose_keypoints_2d"]
    for joint in (contract.Body25.R_HIP, contract.Body25.L_HIP):
        flat[3 * joint : 3 * joint + 3] = [0.0, 0.0, 0.0]
    broken_copy.write_text(rel, json.dumps(document))
    with pytest.raises(ItemError) as caught:
        load_pair(broken_copy, LAYOUT_OURS, *first_pair)
    assert caught.value.code == MISSING_KEYPOINTS


def test_the_dataset_yields_none_for_a_bad_pair_and_collate_drops_it(split, first_pair):
    dataset = PairDataset(split, [first_pair, ("nobody_00.jpg", first_pair[1])], size_hw=SMALL)
    batch = collate_pairs([dataset[0], dataset[1]])
    assert dataset[1] is None
    assert batch["img_name"] == [first_pair[0]] and batch["img"].shape[0] == 1


# ---- The official VITON-HD layout ---------------------------------------------------------------------


def test_the_official_layout_gives_the_same_tensors(tryon_dataset, tmp_path, first_pair, split):
    """image-parse/, openpose-img/, openpose-json/ and no parse-agnostic folder: computed online, same result."""
    official = tmp_path / "test"
    for ours, theirs in ((contract.DIR_IMAGE, "image"), (contract.DIR_CLOTH, "cloth"),
                         (contract.DIR_CLOTH_MASK, "cloth-mask"), (contract.DIR_PARSE, "image-parse"),
                         (contract.DIR_POSE_IMG, "openpose-img"), (contract.DIR_POSE_JSON, "openpose-json")):  # fmt: skip
        shutil.copytree(tryon_dataset.path("train", ours), official / theirs)
    store = Store(str(official))
    assert detect_split_layout(store) == LAYOUT_VITONHD
    theirs = load_pair(store, LAYOUT_VITONHD, *first_pair, size_hw=SMALL)
    ours = load_pair(split, LAYOUT_OURS, *first_pair, size_hw=SMALL)
    for key in ("img", "img_agnostic", "parse_agnostic", "pose", "cloth", "cloth_mask"):
        assert torch.equal(theirs[key], ours[key]), f"{key} differs between the layouts"


# ---- Pipeline glue (contract §1.8) --------------------------------------------------------------------


def test_the_seg_noise_is_binary_with_about_16_percent_ones():
    cv2.setRNGSeed(0)
    noise = binary_noise(2, 256, 192)
    assert set(noise.unique().tolist()) == {0.0, 1.0}
    assert 0.15 < noise.mean().item() < 0.17, "gen_noise gives ~15.9% ones (contract §1.8)"


def test_the_seg_noise_repeats_under_the_same_opencv_seed():
    cv2.setRNGSeed(7)
    first = binary_noise(1, 64, 48)
    cv2.setRNGSeed(7)
    assert torch.equal(first, binary_noise(1, 64, 48))


def test_the_parse_blur_is_a_normalised_15x15_gaussian_with_zero_padding():
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[0, 0, 15, 15] = 1.0
    blurred = gaussian_blur(impulse)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-6)
    row = blurred[0, 0, 15]
    assert (row[8:23] > 0).all() and row[:8].abs().sum() == 0 and row[23:].abs().sum() == 0, "15 taps wide"
    edge = gaussian_blur(torch.ones(1, 1, 31, 31))
    assert edge[0, 0, 0, 0] < 0.5, "zero padding darkens the border, as torchgeometry's blur"


def test_seg_and_gmm_inputs_have_the_official_channels_at_a_quarter_size(split, first_pair):
    batch = collate_pairs([load_pair(split, LAYOUT_OURS, *first_pair, size_hw=SMALL, targets=True)])
    assert tuple(seg_input(batch).shape) == (1, 21, 128, 96)
    input_a, input_b = gmm_input(merge_13_to_7(batch["parse"]), batch)
    assert tuple(input_a.shape) == (1, 7, 128, 96) and tuple(input_b.shape) == (1, 3, 128, 96)


def test_seg_output_becomes_a_one_hot_7_group_parse_at_full_size():
    seg_out = torch.zeros(1, 13, 8, 6)
    seg_out[:, 3] = 1.0  # "upper" everywhere
    parse7 = parse7_from_seg(seg_out, (32, 24))
    assert tuple(parse7.shape) == (1, 7, 32, 24)
    assert torch.equal(parse7[:, 2], torch.ones(1, 32, 24))


def test_the_misalignment_mask_is_the_cloth_region_the_warped_mask_misses():
    parse7 = torch.zeros(1, 7, 2, 2)
    parse7[0, 2] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    parse7[0, 0] = 1.0 - parse7[0, 2]
    warped_cm = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    parse_div, misalign = misalignment(parse7, warped_cm)
    assert misalign[0, 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert parse_div.shape[1] == 8 and parse_div[0, 2].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_output_images_are_truncated_like_save_images():
    x = torch.tensor([-1.0, 0.0, 0.999, 1.0]).reshape(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert to_uint8_images(x)[0, 0, :, 0].tolist() == [0, 127, 254, 255]


def test_try_on_is_deterministic_when_seeded(split, first_pair):
    nets, _, ids = load_networks(None, arch=TINY)
    assert set(ids.values()) == {"random-init"}
    batch = collate_pairs([load_pair(split, LAYOUT_OURS, *first_pair, size_hw=SMALL)])
    seed_everything(3)
    first = try_on(nets, batch)
    seed_everything(3)
    second = try_on(nets, batch)
    assert tuple(first.shape) == (1, 3, *SMALL)
    assert torch.equal(first, second)
    seed_everything(4)
    assert not torch.equal(first, try_on(nets, batch)), "the noise must depend on the seed"


# torchgeometry 0.1.2's get_gaussian_kernel(15, 3.0), the 1-D taps of the official blur, as float32 values.
TGM_TAPS_15_3 = (
    0.008846950717270374, 0.018215905874967575, 0.033562395721673965, 0.05533503368496895,
    0.08163803070783615, 0.10777793079614639, 0.12732458114624023, 0.13459834456443787,
    0.12732458114624023, 0.10777793079614639, 0.08163803070783615, 0.05533503368496895,
    0.033562395721673965, 0.018215905874967575, 0.008846950717270374,
)  # fmt: skip


def test_the_parse_blur_kernel_is_torchgeometrys_to_the_bit():
    taps = torch.tensor(TGM_TAPS_15_3, dtype=torch.float32)
    assert torch.equal(gaussian_kernel_2d(), torch.outer(taps, taps))
    exact = [math.exp(-((i - 7) ** 2) / 18.0) for i in range(15)]  # by hand, in double
    assert max(abs(t - e / sum(exact)) for t, e in zip(TGM_TAPS_15_3, exact)) < 1e-8


def test_the_parse_blur_is_one_15x15_convolution_with_zero_padding():
    """On a 5x5 tensor every output sums kernel x input over the window, zeros outside; and the values are
    those of a single 15x15 convolution (two 1-D passes differ in the last bits on a third of them)."""
    x = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5) / 7.0
    kernel = gaussian_kernel_2d().double()
    blurred = gaussian_blur(x)
    for row in range(5):
        for col in range(5):
            by_hand = sum(kernel[7 + r - row, 7 + c - col].item() * x[0, 0, r, c].item()
                          for r in range(5) for c in range(5))
            assert blurred[0, 0, row, col].item() == pytest.approx(by_hand, abs=1e-6)
    one_pass = torch.nn.functional.conv2d(x, gaussian_kernel_2d()[None, None], padding=7)
    assert torch.equal(blurred, one_pass)


def test_with_per_pair_seeds_a_pair_renders_the_same_alone_or_in_a_batch(split, tryon_dataset):
    from vitonhd_models.pipeline import pair_seed

    pairs = read_pairs(tryon_dataset, "train")[:2]
    nets, _, _ = load_networks(None, arch=TINY)
    samples = [load_pair(split, LAYOUT_OURS, *pair, size_hw=SMALL) for pair in pairs]
    seeds = [pair_seed(0, *pair) for pair in pairs]
    together = try_on(nets, collate_pairs(samples), seeds=seeds)
    torch.manual_seed(123)  # the global RNGs must not matter
    cv2.setRNGSeed(123)
    alone = try_on(nets, collate_pairs(samples[1:]), seeds=seeds[1:])
    # Batched convolutions and the TPS weights' batched product round differently from single ones, and the
    # TPS system (badly conditioned) amplifies that, as in the official code; half an 8-bit step is 3.9e-3.
    assert torch.allclose(together[1:], alone, atol=3.9e-3), (together[1:] - alone).abs().max()
    assert pair_seed(0, *pairs[0]) != pair_seed(1, *pairs[0]) != pair_seed(0, *pairs[1])
