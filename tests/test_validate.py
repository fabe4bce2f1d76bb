"""`vitonprep validate`: each mistake users of the official code report gets a dataset that has exactly it.

Every test builds a small, fully valid dataset on disk (768x1024 files, encoded once and copied), puts
one mistake in it, and asserts that the validator reports that problem code and nothing else.
"""

from __future__ import annotations

import io
import json
import shutil
from functools import cache
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from flows.cli.validate import main as validate_main
from tasks.infra.store import Store
from tasks.tools.validate import (
    CODES,
    LIP10_MAX_PERSON_FRACTION,
    MASK_MIN_BINARY_FRACTION,
    check_mask_pixels,
    check_pose_document,
    codes_of,
    lip_label10_reason,
    validate_dataset,
)
from vitonhd_models import contract
from vitonhd_models.contract import IMAGE_HEIGHT as H
from vitonhd_models.contract import IMAGE_WIDTH as W
from vitonhd_models.contract import Body25, Cihp

STEMS = ("00001_00", "00002_00")
HRVITON_DIRS = {"parse": "image-parse-v3", "pose_json": "openpose_json", "pose_img": "openpose_img"}
VITONHD_DIRS = {"parse": "image-parse", "pose_json": "openpose-json", "pose_img": "openpose-img"}

# ---------------------------------------------------------------------------------------------------
# Valid files, encoded once
# ---------------------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def clean_labels() -> np.ndarray:
    """A standing person in CIHP ids, with a small neck region of 10 (as CIHP's torso skin is)."""
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[40:140, 300:470] = Cihp.HAIR
    labels[100:260, 320:450] = Cihp.FACE
    labels[260:310, 360:410] = Cihp.TORSO_SKIN
    labels[300:620, 230:540] = Cihp.UPPER_CLOTHES
    labels[310:600, 540:600] = Cihp.LEFT_ARM
    labels[310:600, 170:230] = Cihp.RIGHT_ARM
    labels[620:960, 260:510] = Cihp.PANTS
    labels[960:1010, 260:380] = Cihp.LEFT_SHOE
    labels[960:1010, 390:510] = Cihp.RIGHT_SHOE
    return labels


def parse_png(labels: np.ndarray, mode: str = "P") -> bytes:
    image = Image.fromarray(labels, mode="L")
    if mode == "P":
        image = image.convert("P")  # keeps the indices as they are
        image.putpalette(contract.cihp_palette_flat())
    return encode(image, "PNG")


def agnostic_labels(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    out[np.isin(out, (5, 6, 7, 10))] = 0
    return out


def body25() -> np.ndarray:
    kp = np.zeros((25, 3), dtype=np.float64)
    points = {
        Body25.NOSE: (384, 190), Body25.NECK: (384, 290), Body25.R_SHOULDER: (280, 320),
        Body25.R_ELBOW: (200, 450), Body25.R_WRIST: (200, 590), Body25.L_SHOULDER: (488, 320),
        Body25.L_ELBOW: (568, 450), Body25.L_WRIST: (568, 590), Body25.MID_HIP: (384, 620),
        Body25.R_HIP: (330, 620), Body25.R_KNEE: (330, 800), Body25.R_ANKLE: (330, 960),
        Body25.L_HIP: (438, 620), Body25.L_KNEE: (438, 800), Body25.L_ANKLE: (438, 960),
        Body25.R_EYE: (360, 170), Body25.L_EYE: (408, 170), Body25.R_EAR: (340, 180), Body25.L_EAR: (428, 180),
    }  # fmt: skip
    for joint, (x, y) in points.items():
        kp[joint] = (x, y, 0.9)
    return kp  # the feet (19-24) stay 0, 0, 0: missing, which is allowed


def coco18_from_body25(kp: np.ndarray) -> np.ndarray:
    order = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)  # COCO-18 in BODY_25 ids
    return kp[list(order)]


def pose_document(keypoints: np.ndarray | None = None, people: int = 1) -> dict:
    flat = [float(v) for v in (body25() if keypoints is None else keypoints).reshape(-1)]
    person = {"person_id": [-1], "pose_keypoints_2d": flat, "face_keypoints_2d": [], "hand_left_keypoints_2d": []}
    return {"version": 1.3, "people": [person] * people}


def json_bytes(document) -> bytes:
    return json.dumps(document).encode()


def rgb_jpeg(colour=(200, 180, 160), size=(W, H), mode="RGB") -> bytes:
    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).rectangle((230, 300, 540, 620), fill=(40, 60, 120))
    return encode(image.convert(mode), "JPEG", quality=60)


def hard_mask() -> Image.Image:
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).polygon([(150, 120), (620, 120), (700, 400), (600, 380), (640, 900), (130, 900)], fill=255)
    return mask


@cache
def valid_files() -> dict[str, bytes]:
    skeleton = Image.new("RGB", (W, H), (0, 0, 0))
    ImageDraw.Draw(skeleton).line([(384, 290), (280, 320), (200, 450)], fill=(255, 85, 0), width=6)
    labels = clean_labels()
    return {
        "image": rgb_jpeg(),
        "cloth": rgb_jpeg((250, 250, 250)),
        "cloth_mask": encode(hard_mask(), "JPEG", quality=90),
        "parse": parse_png(labels),
        "parse_agnostic": parse_png(agnostic_labels(labels)),
        "agnostic": rgb_jpeg((128, 128, 128)),
        "pose_json": json_bytes(pose_document()),
        "pose_img": encode(skeleton, "PNG"),
    }


# ---------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------


def put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_dataset(
    root: Path,
    persons=tuple(f"{s}.jpg" for s in STEMS),
    cloths=tuple(f"{s}.jpg" for s in STEMS),
    pairs: str | None = None,
    split: str = "test",
    dirs: dict[str, str] = HRVITON_DIRS,
    densepose: bool = True,
) -> Path:
    """A valid dataset under `root`: `split`/ with every folder (DensePose renderings included, as a
    user adds them), and `<split>_pairs.txt` (unpaired)."""
    files = valid_files()
    base = root / split
    for name in persons:
        stem = name.rpartition(".")[0] or name
        put(base / "image" / name, files["image"])
        put(base / dirs["parse"] / contract.parse_name(stem), files["parse"])
        put(base / contract.DIR_PARSE_AGNOSTIC / contract.parse_agnostic_name(stem), files["parse_agnostic"])
        put(base / contract.DIR_AGNOSTIC / contract.agnostic_name(stem), files["agnostic"])
        put(base / dirs["pose_json"] / contract.keypoints_json_name(stem), files["pose_json"])
        put(base / dirs["pose_img"] / contract.rendered_pose_name(stem), files["pose_img"])
        if densepose:
            put(base / "image-densepose" / name, files["image"])  # any 768x1024 RGB JPEG will do here
    for name in cloths:
        put(base / "cloth" / name, files["cloth"])
        put(base / "cloth-mask" / name, files["cloth_mask"])
    if pairs is None:
        pairs = "".join(f"{p} {c}\n" for p, c in zip(persons, reversed(cloths)))
    put(root / contract.pairs_file_name(split), pairs.encode())
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "dataset")


def validate(root: Path, **kwargs):
    return validate_dataset(Store(str(root)), workers=4, **kwargs)


def assert_only(report, code: str, path: str | None = None) -> None:
    """The report holds `code` (at `path`, when given) and no other code."""
    assert code in CODES, f"{code} is not a documented code"
    found = codes_of(report.problems)
    assert found == {code}, f"expected only {code!r}, got {sorted(found)}:\n{report.format_text()}"
    if path is not None:
        paths = [p.path for p in report.problems]
        assert path in paths, f"expected {code!r} at {path!r}, got it at {paths}"


# ---------------------------------------------------------------------------------------------------
# Clean datasets
# ---------------------------------------------------------------------------------------------------


def test_a_valid_hrviton_dataset_has_no_problem(dataset):
    report = validate(dataset)
    assert report.ok, report.format_text()
    assert report.splits == ["test"]
    assert report.counts["persons"] == 2 and report.counts["cloths"] == 2 and report.counts["pairs"] == 2
    assert report.counts["files"] == 2 * 7 + 2 * 2 + 1  # companions, cloths and masks, the pairs file
    assert report.format_text().splitlines()[-1].startswith("OK: no problems")


def test_the_official_vitonhd_folder_names_are_accepted_for_vitonhd_only(tmp_path):
    root = make_dataset(tmp_path / "dataset", dirs=VITONHD_DIRS)
    assert validate(root, targets=["vitonhd"]).ok, validate(root, targets=["vitonhd"]).format_text()
    report = validate(root)
    assert report.verdicts()["vitonhd"]["ok"] and not report.verdicts()["hrviton"]["ok"]
    assert_only(report, "hrviton_folder_names", "test/image-parse-v3/")
    assert {p.path for p in report.problems} == {"test/image-parse-v3/", "test/openpose_json/", "test/openpose_img/"}


def test_hrviton_names_alone_get_a_note_on_how_to_run_vitonhds_test_py(dataset):
    report = validate(dataset)
    assert report.ok, report.format_text()
    assert any("ln -s image-parse-v3 image-parse" in note for note in report.notes), report.notes


def test_both_layouts_side_by_side_are_checked(tmp_path):
    root = make_dataset(tmp_path / "dataset")
    make_dataset(root, dirs=VITONHD_DIRS)  # a VITON-HD view beside the HR-VITON folders
    (root / "test" / "openpose-json" / "00002_00_keypoints.json").unlink()
    assert_only(validate(root), "missing_file", "test/openpose-json/00002_00_keypoints.json")


def test_a_split_folder_given_directly_is_checked_without_pairs(dataset):
    report = validate(dataset / "test")
    assert report.ok, report.format_text()
    assert report.counts["persons"] == 2
    assert any("pairs" in note for note in report.notes)


def test_only_the_requested_split_is_checked(tmp_path):
    root = make_dataset(tmp_path / "dataset")
    make_dataset(root, split="train")
    (root / "train" / "cloth-mask" / "00001_00.jpg").unlink()
    assert validate(root, splits=["test"]).ok
    assert_only(validate(root), "missing_file", "train/cloth-mask/00001_00.jpg")


def test_a_dataset_on_another_filesystem_is_read_through_fsspec(dataset):
    memory = fsspec.filesystem("memory")
    memory.put(str(dataset), "/validate-test", recursive=True)
    try:
        memory.rm("/validate-test/test/openpose_img/00001_00_rendered.png")
        report = validate_dataset(Store("memory://validate-test"), workers=4)
    finally:
        memory.rm("/validate-test", recursive=True)
    assert_only(report, "missing_file", "test/openpose_img/00001_00_rendered.png")


# ---------------------------------------------------------------------------------------------------
# Sizes and modes
# ---------------------------------------------------------------------------------------------------


def test_a_person_image_of_another_size(dataset):
    put(dataset / "test/image/00001_00.jpg", rgb_jpeg(size=(600, 800)))
    assert_only(validate(dataset), "image_size", "test/image/00001_00.jpg")


@pytest.mark.parametrize(
    "rel, data",
    [
        ("test/image/00001_00.jpg", lambda: rgb_jpeg(mode="L")),
        ("test/cloth/00001_00.jpg", lambda: rgb_jpeg(mode="CMYK")),
        ("test/openpose_img/00001_00_rendered.png", lambda: encode(Image.new("RGBA", (W, H)), "PNG")),
    ],
    ids=["grey-person", "cmyk-cloth", "rgba-rendered-pose"],
)
def test_an_image_that_is_not_rgb(dataset, rel, data):
    put(dataset / rel, data())
    assert_only(validate(dataset), "image_mode", rel)


def test_a_file_that_is_no_image(dataset):
    put(dataset / "test/image/00002_00.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    assert_only(validate(dataset), "file_unreadable", "test/image/00002_00.jpg")


def test_a_truncated_parse_map(dataset):
    data = valid_files()["parse"]
    put(dataset / "test/image-parse-v3/00002_00.png", data[: len(data) // 2])  # the header reads, the pixels not
    assert_only(validate(dataset), "file_unreadable", "test/image-parse-v3/00002_00.png")


# ---------------------------------------------------------------------------------------------------
# Parse maps
# ---------------------------------------------------------------------------------------------------


def test_a_parse_map_saved_as_an_rgb_visualisation(dataset):
    palette = np.array(contract.CIHP_PALETTE, dtype=np.uint8)
    picture = Image.fromarray(palette[clean_labels()], mode="RGB")
    put(dataset / "test/image-parse-v3/00001_00.png", encode(picture, "PNG"))
    assert_only(validate(dataset), "parse_rgb", "test/image-parse-v3/00001_00.png")


def test_a_parse_map_with_values_above_19(dataset):
    labels = clean_labels()
    labels[0:20, 0:768] = 255  # an "ignore" label some parsers write
    put(dataset / "test/image-parse-v3/00001_00.png", parse_png(labels, mode="L"))
    assert_only(validate(dataset), "parse_value_range", "test/image-parse-v3/00001_00.png")


def test_a_parse_map_in_l_mode_with_valid_ids_is_fine(dataset):
    put(dataset / "test/image-parse-v3/00001_00.png", parse_png(clean_labels(), mode="L"))
    assert validate(dataset).ok


def test_a_parse_map_with_lips_jumpsuit_label_10(dataset):
    labels = clean_labels()
    labels[np.isin(labels, (Cihp.UPPER_CLOTHES, Cihp.PANTS))] = 10  # LIP: 10 = Jumpsuits
    put(dataset / "test/image-parse-v3/00001_00.png", parse_png(labels))
    assert_only(validate(dataset), "parse_lip_label10", "test/image-parse-v3/00001_00.png")


def test_a_parse_map_in_another_mode(dataset):
    put(dataset / "test/image-parse-v3/00001_00.png", encode(Image.fromarray(clean_labels()).convert("LA"), "PNG"))
    assert_only(validate(dataset), "parse_mode", "test/image-parse-v3/00001_00.png")


def test_a_parse_agnostic_map_that_still_holds_the_clothes(dataset):
    put(dataset / "test/image-parse-agnostic-v3.2/00002_00.png", parse_png(clean_labels()))
    assert_only(validate(dataset), "parse_agnostic_has_clothes", "test/image-parse-agnostic-v3.2/00002_00.png")


class TestLipLabel10Heuristic:
    def test_cihps_neck_is_not_flagged(self):
        assert lip_label10_reason(clean_labels()) is None

    def test_a_bare_midriff_above_the_hips_is_not_flagged(self):
        labels = clean_labels()
        labels[480:620, 230:540] = Cihp.TORSO_SKIN  # a crop top: skin from the chest to the waistband
        assert lip_label10_reason(labels) is None

    def test_a_large_label_10_is_flagged_by_its_share(self):
        labels = clean_labels()
        labels[labels == Cihp.UPPER_CLOTHES] = 10
        labels[labels == Cihp.PANTS] = 10
        reason = lip_label10_reason(labels)
        assert reason is not None and f"> {LIP10_MAX_PERSON_FRACTION:.0%}" in reason

    def test_a_narrow_label_10_down_the_legs_is_flagged_by_its_extent(self):
        labels = clean_labels()
        labels[300:960, 370:400] = 10  # a jumpsuit showing between an open coat's edges, down to the shoes
        reason = lip_label10_reason(labels)
        assert reason is not None and "of the way down" in reason


# ---------------------------------------------------------------------------------------------------
# OpenPose JSON
# ---------------------------------------------------------------------------------------------------

POSE = "test/openpose_json/00001_00_keypoints.json"


def test_a_coco18_pose(dataset):
    put(dataset / POSE, json_bytes(pose_document(coco18_from_body25(body25()))))
    assert_only(validate(dataset), "pose_coco18", POSE)


def test_a_coco18_pose_padded_to_75_numbers(dataset):
    padded = np.zeros((25, 3))
    padded[:18] = coco18_from_body25(body25())
    put(dataset / POSE, json_bytes(pose_document(padded)))
    assert_only(validate(dataset), "pose_coco18", POSE)


def test_a_pose_with_no_people(dataset):
    put(dataset / POSE, json_bytes({"version": 1.3, "people": []}))
    assert_only(validate(dataset), "pose_no_people", POSE)


@pytest.mark.parametrize("joint", [Body25.NECK, Body25.R_SHOULDER, Body25.L_SHOULDER, Body25.R_HIP, Body25.L_HIP])
def test_a_pose_without_a_keypoint_the_agnostic_needs(dataset, joint):
    keypoints = body25()
    keypoints[joint] = 0
    put(dataset / POSE, json_bytes(pose_document(keypoints)))
    report = validate(dataset)
    assert_only(report, "pose_missing_keypoints", POSE)
    assert joint.name in report.problems[0].message


def test_a_pose_without_feet_is_fine():
    assert check_pose_document(POSE, pose_document()) == []  # body25() has no feet


def test_a_pose_with_two_people(dataset):
    put(dataset / POSE, json_bytes(pose_document(people=2)))
    assert_only(validate(dataset), "pose_multiple_people", POSE)


def test_a_pose_with_both_hips_at_one_point(dataset):
    keypoints = body25()
    keypoints[Body25.L_HIP] = keypoints[Body25.R_HIP]
    keypoints[Body25.MID_HIP] = keypoints[Body25.R_HIP]
    put(dataset / POSE, json_bytes(pose_document(keypoints)))
    assert_only(validate(dataset), "pose_zero_hip_width", POSE)


@pytest.mark.parametrize("scale", [2.0, 1 / 1024], ids=["another-resolution", "normalised"])
def test_a_pose_not_in_pixels_of_the_768x1024_image(dataset, scale):
    keypoints = body25()
    keypoints[:, :2] *= scale
    put(dataset / POSE, json_bytes(pose_document(keypoints)))
    assert_only(validate(dataset), "pose_coordinates", POSE)


@pytest.mark.parametrize(
    "data",
    [b"{not json", json_bytes({"version": 1.0, "people": [{"pose_keypoints": [0.0] * 54}]}), json_bytes([])],
    ids=["not-json", "openpose-1.0-key", "a-list"],
)
def test_a_pose_json_the_loaders_cannot_read(dataset, data):
    put(dataset / POSE, data)
    assert_only(validate(dataset), "pose_malformed", POSE)


# ---------------------------------------------------------------------------------------------------
# Cloth masks
# ---------------------------------------------------------------------------------------------------

MASK = "test/cloth-mask/00001_00.jpg"


def test_a_cloth_mask_with_three_channels(dataset):
    put(dataset / MASK, encode(hard_mask().convert("RGB"), "JPEG", quality=90))
    assert_only(validate(dataset), "cloth_mask_channels", MASK)


def test_a_cloth_mask_that_is_a_grey_picture(dataset):
    gradient = np.tile(np.linspace(0, 255, W, dtype=np.uint8), (H, 1))
    put(dataset / MASK, encode(Image.fromarray(gradient, mode="L"), "JPEG", quality=90))
    assert_only(validate(dataset), "cloth_mask_not_binary", MASK)


def test_a_cloth_mask_that_is_empty_at_128(dataset):
    put(dataset / MASK, encode(Image.new("L", (W, H), 20), "JPEG", quality=90))
    assert_only(validate(dataset), "cloth_mask_empty", MASK)


def test_a_bilevel_cloth_mask(dataset):
    put(dataset / MASK, encode(hard_mask().convert("1"), "PNG"))  # `>= 128` on a bool array is always False
    assert_only(validate(dataset), "cloth_mask_mode", MASK)


class TestMaskTolerance:
    def jpeg(self, image: Image.Image, quality: int) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(encode(image, "JPEG", quality=quality))))

    def test_a_hard_mask_at_low_jpeg_quality_is_binary(self):
        assert check_mask_pixels(MASK, self.jpeg(hard_mask(), 30)) == []

    def test_a_feathered_edge_is_binary(self):
        assert check_mask_pixels(MASK, self.jpeg(hard_mask().filter(ImageFilter.GaussianBlur(2)), 75)) == []

    def test_a_garment_cut_out_in_grey_is_not_binary(self):
        cut_out = np.where(np.asarray(hard_mask()) > 0, 150, 0).astype(np.uint8)  # garment colour on black
        problems = check_mask_pixels(MASK, cut_out)
        assert codes_of(problems) == {"cloth_mask_not_binary"}
        assert f"at most {1 - MASK_MIN_BINARY_FRACTION:.0%}" in problems[0].message


# ---------------------------------------------------------------------------------------------------
# Missing files and folders, pairs
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [
        "test/image-parse-v3/00001_00.png",
        "test/image-parse-agnostic-v3.2/00001_00.png",
        "test/agnostic-v3.2/00001_00.jpg",
        "test/openpose_json/00001_00_keypoints.json",
        "test/openpose_img/00001_00_rendered.png",
        "test/cloth-mask/00002_00.jpg",
    ],
)
def test_a_missing_companion_file(dataset, rel):
    (dataset / rel).unlink()
    assert_only(validate(dataset), "missing_file", rel)


@pytest.mark.parametrize("folder", ["cloth-mask", "image-parse-v3", "openpose_json", "openpose_img"])
def test_a_missing_folder_is_reported_once(dataset, folder):
    shutil.rmtree(dataset / "test" / folder)
    report = validate(dataset)
    assert_only(report, "missing_folder", f"test/{folder}/")
    assert len(report.problems) == 1, report.format_text()


def test_folders_mixing_the_two_layouts(dataset):
    (dataset / "test/image-parse-v3").rename(dataset / "test/image-parse")
    assert_only(validate(dataset), "layout_mixed")


def test_a_split_without_its_pairs_file(dataset):
    (dataset / "test_pairs.txt").unlink()
    assert_only(validate(dataset), "missing_pairs_file", "test_pairs.txt")


def test_a_pairs_file_without_its_split_folder(dataset):
    put(dataset / "train_pairs.txt", b"00001_00.jpg 00001_00.jpg\n")
    assert_only(validate(dataset), "missing_folder", "train/")


def test_a_folder_that_is_no_dataset(tmp_path):
    (tmp_path / "photos").mkdir()
    report = validate(tmp_path)
    assert_only(report, "no_dataset")
    assert report.format_text().splitlines()[-1].startswith("FAIL")


def test_a_pair_naming_a_missing_cloth(tmp_path):
    root = make_dataset(tmp_path / "dataset", pairs="00001_00.jpg 00002_00.jpg\n00002_00.jpg 00003_00.jpg\n")
    report = validate(root)
    assert_only(report, "pairs_missing_file", "test_pairs.txt:2")
    assert "00003_00.jpg" in report.problems[0].message


@pytest.mark.parametrize(
    "pairs", ["00001_00.jpg 00002_00.jpg extra\n", "00001_00.jpg 00002_00.jpg\n\n00002_00.jpg 00001_00.jpg\n", ""]
)
def test_a_pairs_file_the_loaders_cannot_split(tmp_path, pairs):
    root = make_dataset(tmp_path / "dataset", pairs=pairs)
    assert_only(validate(root), "pairs_malformed")


# ---------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, code",
    [
        ("00003_00.JPG", "name_jpg_case"),
        ("image03_00.jpg", "name_contains_image"),
        ("00003_00.png", "name_extension"),
        ("00003_00.jpg.jpg", "name_extra_jpg"),
        ("00003 00.jpg", "name_whitespace"),
    ],
)
def test_a_person_name_the_official_loaders_break_on(tmp_path, name, code):
    persons = (*(f"{s}.jpg" for s in STEMS), name)  # companions are named after its stem, as they should be
    root = make_dataset(tmp_path / "dataset", persons=persons, pairs="00001_00.jpg 00002_00.jpg\n")
    assert_only(validate(root), code, f"test/image/{name}")


def test_a_cloth_name_with_whitespace(tmp_path):
    cloths = (*(f"{s}.jpg" for s in STEMS), "my cloth.jpg")
    root = make_dataset(tmp_path / "dataset", cloths=cloths, pairs="00001_00.jpg 00002_00.jpg\n")
    assert_only(validate(root), "name_whitespace", "test/cloth/my cloth.jpg")


# ---------------------------------------------------------------------------------------------------
# The report and the command
# ---------------------------------------------------------------------------------------------------


def test_the_report_groups_problems_and_caps_the_examples(tmp_path):
    stems = [f"{i:05d}_00" for i in range(1, 8)]
    root = make_dataset(tmp_path / "dataset", persons=[f"{s}.jpg" for s in stems], cloths=[f"{s}.jpg" for s in stems])
    for stem in stems:
        (root / "test/openpose_img" / f"{stem}_rendered.png").unlink()
    put(root / MASK, encode(Image.new("L", (W, H), 0), "JPEG"))
    report = validate(root)
    summary = report.to_dict(max_examples=3)
    assert summary["ok"] is False and summary["problem_count"] == 8
    assert summary["problems"]["missing_file"]["count"] == 7
    assert len(summary["problems"]["missing_file"]["examples"]) == 3
    text = report.format_text(max_examples=3)
    assert "missing_file: 7" in text and "... and 4 more" in text and "cloth_mask_empty: 1" in text
    assert text.splitlines()[-1] == "FAIL: 8 problems of 2 kinds (missing_file 7, cloth_mask_empty 1)"


def test_the_command_prints_json_and_exits_1_on_problems(dataset, capsys):
    (dataset / "test/openpose_json/00001_00_keypoints.json").unlink()
    code = validate_main([str(dataset), "--json", "--workers", "2"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert set(out) == {"root", "ok", "splits", "counts", "seconds", "problem_count", "problems", "notes", "targets"}
    assert out["targets"]["vitonhd"]["codes"] == {"missing_file": 1} and not out["targets"]["hrviton"]["ok"]
    assert out["ok"] is False and out["splits"] == ["test"]
    assert out["problems"]["missing_file"]["examples"][0]["path"] == "test/openpose_json/00001_00_keypoints.json"


def test_the_command_exits_0_on_a_valid_dataset(dataset, capsys):
    assert validate_main([str(dataset), "--split", "test", "--no-progress"]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("OK: no problems")


def test_the_command_exits_2_when_it_cannot_run(dataset, capsys):
    assert validate_main([str(dataset), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_the_command_help_lists_every_problem_code(capsys):
    with pytest.raises(SystemExit) as exit_info:
        validate_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: vitonprep validate" in out
    assert all(code in out for code in CODES)


def test_every_emitted_code_is_documented():
    # The codes tests assert on above are in CODES (assert_only checks); here: none is undocumented in source.
    source = Path(__file__).resolve().parent.parent.joinpath("tasks", "tools", "validate.py").read_text()
    import re

    emitted = set(re.findall(r'Problem\(\s*"([a-z0-9_]+)"', source))
    assert emitted and emitted <= set(CODES), sorted(emitted - set(CODES))


# ---------------------------------------------------------------------------------------------------
# HR-VITON: what its loaders read besides VITON-HD's (the top user reports against it)
# ---------------------------------------------------------------------------------------------------


def test_a_person_without_a_paired_cloth_under_their_name_breaks_hrviton_only(tmp_path):
    """HR-VITON #14, #71, #101: FileNotFoundError cloth/<person>.jpg, in unpaired test too."""
    root = make_dataset(tmp_path / "dataset", cloths=("10001_00.jpg", "10002_00.jpg"))
    report = validate(root)
    assert_only(report, "paired_cloth_missing", "test/cloth/00001_00.jpg")
    assert {p.path for p in report.problems} == {f"test/{folder}/{stem}.jpg" for folder in ("cloth", "cloth-mask")
                                                for stem in STEMS}
    assert report.verdicts()["vitonhd"]["ok"], "VITON-HD reads only the pair's cloth"
    assert validate(root, targets=["vitonhd"]).ok


def test_a_dataset_without_densepose_breaks_hrviton_only(tmp_path):
    """HR-VITON #8, #15, #61, #81, #89: image-densepose/ is missing."""
    root = make_dataset(tmp_path / "dataset", densepose=False)
    report = validate(root)
    assert_only(report, "densepose_missing", "test/image-densepose/")
    assert len(report.problems) == 1 and report.problems[0].targets == ("hrviton",)
    message = report.problems[0].message
    assert "--densepose geometric" in message and "apply_net.py show" in message and "dp_segm" in message, \
        "the problem says what to add: our renders, or detectron2's and how"
    assert validate(root, targets=["vitonhd"]).ok


def test_a_person_without_a_densepose_rendering_is_told_what_to_add(dataset):
    (dataset / "test/image-densepose/00001_00.jpg").unlink()  # a --densepose none rerun removed ours
    [problem] = validate(dataset, targets=["hrviton"]).problems
    assert problem.code == "densepose_missing" and problem.path == "test/image-densepose/00001_00.jpg"
    assert "--densepose geometric" in problem.message and "dp_segm" in problem.message


def test_densepose_renderings_are_checked_by_name_and_size(dataset):
    (dataset / "test/image-densepose/00001_00.jpg").rename(dataset / "test/image-densepose/00001_00.png")
    put(dataset / "test/image-densepose/00002_00.jpg", rgb_jpeg(size=(384, 512)))
    report = validate(dataset, targets=["hrviton"])
    assert codes_of(report.problems) == {"densepose_missing", "image_size"}, report.format_text()
    assert {p.path for p in report.problems} == {"test/image-densepose/00001_00.jpg", "test/image-densepose/00002_00.jpg"}
    assert validate(dataset, targets=["vitonhd"]).ok


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_a_densepose_rendering_that_is_not_rgb_breaks_hrviton(dataset, mode):
    """HR-VITON normalises the rendering with 3 means: a grey or RGBA one (alpha kept) breaks its loader."""
    image = Image.new("RGB", (W, H), (30, 60, 160)).convert(mode)
    put(dataset / "test/image-densepose/00001_00.jpg", encode(image, "PNG"))  # a PNG under the .jpg name opens too
    report = validate(dataset, targets=["hrviton"])
    assert [(p.code, p.path) for p in report.problems] == [("image_mode", "test/image-densepose/00001_00.jpg")]


def test_the_report_gives_a_verdict_per_target(tmp_path):
    root = make_dataset(tmp_path / "dataset", densepose=False)
    text = validate(root).format_text()
    assert "VITON-HD (vitonprep train and tryon; test.py once its folder names are linked): OK" in text
    assert "HR-VITON (cp_dataset*.py): 1 problems (densepose_missing 1)" in text


def test_the_command_checks_one_target_on_request(tmp_path, capsys):
    root = make_dataset(tmp_path / "dataset", densepose=False)
    assert validate_main([str(root), "--target", "vitonhd", "--no-progress"]) == 0
    assert validate_main([str(root), "--target", "hrviton", "--no-progress"]) == 1
    assert "densepose_missing" in capsys.readouterr().out
