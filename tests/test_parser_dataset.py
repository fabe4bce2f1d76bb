"""`vitonprep parser-dataset`: CIHP label maps (or COCO JSON) -> an Ultralytics segmentation dataset.

Small painted fixtures (128x96): ellipses and boxes for hair, face, upper body (with a logo hole), arms
and two trouser legs, so every region's shape and every expected count is known.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from flows.cli import main
from tasks.infra.store import Store
from tasks.stages.parse import encode_parse_png
from tasks.stages.parse_yolo import DEFAULT_YOLO_CLASS_TO_CIHP, YOLO_CLASS_NAMES
from tasks.tools.parser_dataset import (
    CIHP20_TABLE,
    CIHP_TO_SEED8,
    NO_CLASS,
    SEED8_TABLE,
    ParserDatasetConfig,
    category_class,
    cihp_to_polygons,
    convert_dataset,
    decode_rle,
    format_label_lines,
    mask_to_polygons,
    parse_label_lines,
    rasterise_polygons,
    rle_string_to_counts,
    split_of,
)
from tests.yolo_weights import network_refused
from vitonhd_models.contract import CIHP_LABEL_NAMES, DIR_IMAGE, DIR_PARSE, Cihp, person_image_name

HEIGHT, WIDTH = 96, 128
MIN_IOU = 0.97


# ---------------------------------------------------------------------------------------------------
# Fixtures: painted CIHP maps
# ---------------------------------------------------------------------------------------------------


def person_map(shift: int = 0) -> np.ndarray:
    """A painted person: hair, face, upper clothes with a scarf "logo" in it (a hole in seed8), two arms,
    two trouser legs reaching the bottom border (one class, two parts)."""
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    cx = 64 + shift
    cv2.ellipse(labels, (cx, 16), (15, 12), 0, 0, 360, int(Cihp.HAIR), -1)
    cv2.ellipse(labels, (cx, 22), (10, 9), 0, 0, 360, int(Cihp.FACE), -1)
    cv2.rectangle(labels, (cx - 5, 31), (cx + 5, 36), int(Cihp.TORSO_SKIN), -1)
    cv2.rectangle(labels, (cx - 22, 37), (cx + 22, 70), int(Cihp.UPPER_CLOTHES), -1)
    cv2.circle(labels, (cx, 52), 6, int(Cihp.SCARF), -1)
    cv2.ellipse(labels, (cx - 32, 55), (7, 20), 0, 0, 360, int(Cihp.LEFT_ARM), -1)
    cv2.ellipse(labels, (cx + 32, 55), (7, 20), 0, 0, 360, int(Cihp.RIGHT_ARM), -1)
    cv2.rectangle(labels, (cx - 18, 71), (cx - 3, HEIGHT - 1), int(Cihp.PANTS), -1)
    cv2.rectangle(labels, (cx + 3, 71), (cx + 18, HEIGHT - 1), int(Cihp.PANTS), -1)
    return labels


def ring_map() -> np.ndarray:
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    cv2.circle(labels, (64, 48), 30, int(Cihp.FACE), -1)
    cv2.circle(labels, (64, 48), 12, int(Cihp.SUNGLASSES), -1)  # background in seed8: the hole
    return labels


def two_parts_map() -> np.ndarray:
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    cv2.ellipse(labels, (35, 48), (18, 30), 0, 0, 360, int(Cihp.PANTS), -1)
    cv2.ellipse(labels, (95, 48), (18, 30), 0, 0, 360, int(Cihp.PANTS), -1)
    return labels


def border_map() -> np.ndarray:
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    cv2.circle(labels, (0, 0), 40, int(Cihp.HAIR), -1)  # cut by the top and left borders
    labels[60:, 90:] = int(Cihp.SKIRT)  # fills the bottom-right corner
    return labels


FIXTURES = {"person": person_map, "ring": ring_map, "two_parts": two_parts_map, "border": border_map}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def per_class_iou(polygons, labels: np.ndarray, table=SEED8_TABLE) -> dict[str, float]:
    painted = rasterise_polygons(polygons, labels.shape)
    expected = table.map(labels)
    classes = sorted(set(np.unique(expected).tolist()) - {NO_CLASS})
    return {table.names[c]: iou(painted == c, expected == c) for c in classes}


def jpeg_of(labels: np.ndarray) -> bytes:
    colours = np.random.default_rng(int(labels.sum())).integers(0, 255, (256, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", colours[labels])
    assert ok
    return data.tobytes()


def png_l(labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(labels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_item(root: Store, stem: str, labels: np.ndarray, split: str = "train", mode: str = "P") -> None:
    root.write_bytes(f"{split}/{DIR_IMAGE}/{person_image_name(stem)}", jpeg_of(labels))
    root.write_bytes(
        f"{split}/{DIR_PARSE}/{stem}.png", encode_parse_png(labels) if mode == "P" else png_l(labels)
    )


STEMS = ("00001_00", "00002_00", "00003_00", "00004_00", "00005_00")


@pytest.fixture
def dataset(tmp_path) -> Store:
    """Five painted items in our layout (train/image + train/image-parse-v3), one of them an L-mode PNG."""
    root = Store(str(tmp_path / "source"))
    for index, stem in enumerate(STEMS):
        write_item(root, stem, person_map(shift=index * 3 - 6), mode="L" if index == 4 else "P")
    return root


def convert(source: Store, out, **options) -> dict:
    return convert_dataset(ParserDatasetConfig(out=str(out), from_parse=source.url, **options))


def splits_of(out) -> dict[str, str]:
    """stem -> split, read back from the written label files."""
    found = {}
    for split in ("train", "val"):
        folder = out / "labels" / split
        for path in folder.glob("*.txt") if folder.is_dir() else ():
            assert path.stem not in found, f"{path.stem} is in both splits"
            found[path.stem] = split
    return found


# ---------------------------------------------------------------------------------------------------
# Class tables
# ---------------------------------------------------------------------------------------------------


def test_seed8_inverse_table_is_the_yolo_parsers_table():
    assert SEED8_TABLE.names == tuple(YOLO_CLASS_NAMES)
    assert dict(SEED8_TABLE.class_to_cihp) == dict(DEFAULT_YOLO_CLASS_TO_CIHP), "seed8 class -> CIHP drifted"
    for cls, cihp in DEFAULT_YOLO_CLASS_TO_CIHP.items():
        assert CIHP_TO_SEED8[cihp] == cls, (
            f"CIHP {cihp} should map back to class {cls} ({YOLO_CLASS_NAMES[cls]})"
        )


def test_seed8_maps_exactly_the_issue_table_and_the_rest_is_background():
    expected = {
        Cihp.HAIR: "hair", Cihp.FACE: "face", Cihp.TORSO_SKIN: "neck",
        Cihp.UPPER_CLOTHES: "upper_body", Cihp.DRESS: "upper_body", Cihp.COAT: "upper_body",
        Cihp.PANTS: "lower_body", Cihp.LEFT_ARM: "left_hand", Cihp.RIGHT_ARM: "right_hand",
        Cihp.SKIRT: "skirt",
    }  # fmt: skip
    got = {Cihp(cihp): SEED8_TABLE.names[cls] for cihp, cls in CIHP_TO_SEED8.items()}
    assert got == expected
    lut = SEED8_TABLE.lut()
    background = [label for label in Cihp if label not in expected]
    assert all(lut[label] == NO_CLASS for label in background), "unlisted CIHP labels must be background"


def test_cihp20_keeps_the_19_labels_in_order():
    assert len(CIHP20_TABLE.names) == 19
    assert CIHP20_TABLE.names[0] == "hat" and CIHP20_TABLE.names[-1] == "right_shoe"
    for label in range(1, 20):
        assert CIHP20_TABLE.cihp_to_class[label] == label - 1
        assert CIHP20_TABLE.class_to_cihp[label - 1] == label
        assert CIHP20_TABLE.names[label - 1] == CIHP_LABEL_NAMES[label] == Cihp(label).name.lower()


def test_coco_category_names_are_normalised_and_matched():
    assert category_class("Upper-Body", SEED8_TABLE) == YOLO_CLASS_NAMES.index("upper_body")
    assert category_class("left hand", SEED8_TABLE) == YOLO_CLASS_NAMES.index("left_hand")
    assert category_class("pants", SEED8_TABLE) == YOLO_CLASS_NAMES.index("lower_body"), (
        "CIHP names map through"
    )
    assert category_class("shoe", SEED8_TABLE) is None
    assert category_class("Left-Shoe", CIHP20_TABLE) == int(Cihp.LEFT_SHOE) - 1


# ---------------------------------------------------------------------------------------------------
# Polygons
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_polygons_rasterise_back_to_the_mapped_map(name):
    labels = FIXTURES[name]()
    ious = per_class_iou(cihp_to_polygons(labels, SEED8_TABLE), labels)
    assert ious, f"{name}: no class found"
    low = {cls: round(value, 4) for cls, value in ious.items() if value <= MIN_IOU}
    assert not low, f"{name}: per-class IoU at or under {MIN_IOU}: {low} (all: {ious})"


def test_a_ring_keeps_its_hole_empty():
    labels = ring_map()
    polygons = cihp_to_polygons(labels, SEED8_TABLE)
    assert len(polygons) == 1, f"a ring is one region, got {len(polygons)} polygons"
    painted = rasterise_polygons(polygons, labels.shape)
    hole = labels == Cihp.SUNGLASSES
    assert painted[48, 64] == NO_CLASS, "the centre of the hole was painted"
    assert np.count_nonzero(painted[hole] != NO_CLASS) <= 0.03 * np.count_nonzero(hole), "the hole was filled"


def test_a_logo_of_another_class_stays_a_hole_in_the_upper_body():
    labels = person_map()
    painted = rasterise_polygons(cihp_to_polygons(labels, SEED8_TABLE), labels.shape)
    assert painted[52, 64] == NO_CLASS, "the scarf logo (background in seed8) was painted as upper body"


def test_each_disjoint_part_is_its_own_polygon():
    polygons = cihp_to_polygons(two_parts_map(), SEED8_TABLE)
    lower = YOLO_CLASS_NAMES.index("lower_body")
    assert [cls for cls, _ in polygons] == [lower, lower]
    xs = sorted(points[:, 0].mean() for _, points in polygons)
    assert xs[0] < 64 < xs[1], "the two legs should be separate polygons left and right"


def test_regions_and_holes_under_min_area_are_dropped():
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[10:13, 10:13] = True  # 9 pixels: noise
    mask[40:80, 40:80] = True
    mask[58:61, 58:61] = False  # a 9-pixel hole: filled
    polygons = mask_to_polygons(mask, min_area=16)
    assert len(polygons) == 1, "the 9-pixel region should be dropped"
    painted = rasterise_polygons([(0, polygons[0])], mask.shape)
    assert painted[59, 59] == 0, "a hole under min_area should be filled"


def test_label_lines_parse_back_to_the_same_polygons():
    labels = person_map()
    polygons = cihp_to_polygons(labels, SEED8_TABLE)
    text = format_label_lines(polygons, WIDTH, HEIGHT)
    lines = text.splitlines()
    assert len(lines) == len(polygons)
    first = lines[0].split()
    assert first[0].isdigit() and all(len(v.split(".")[1]) == 6 for v in first[1:]), "6 decimals"
    assert all(0.0 <= float(v) <= 1.0 for line in lines for v in line.split()[1:])
    back = parse_label_lines(text, WIDTH, HEIGHT)
    assert [c for c, _ in back] == [c for c, _ in polygons]
    for (_, got), (_, want) in zip(back, polygons):
        np.testing.assert_allclose(got, want, atol=1e-3)


# ---------------------------------------------------------------------------------------------------
# COCO RLE
# ---------------------------------------------------------------------------------------------------


def counts_to_rle_string(counts: Sequence[int]) -> str:
    """Run lengths -> pycocotools' compressed RLE string (`rleToString`): what COCO fixtures hold."""
    chars = []
    for index, count in enumerate(counts):
        value = int(count) - (int(counts[index - 2]) if index > 2 else 0)
        more = True
        while more:
            char = value & 0x1F
            value >>= 5
            more = value != -1 if char & 0x10 else value != 0
            if more:
                char |= 0x20
            chars.append(chr(char + 48))
    return "".join(chars)


def encode_rle(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """(H, W) mask -> COCO RLE `{"size": [H, W], "counts": ...}` (a string when `compressed`)."""
    mask = np.asarray(mask).astype(bool)
    height, width = mask.shape
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(height), int(width)], "counts": counts_to_rle_string(runs) if compressed else runs}




@pytest.mark.parametrize(
    "text, counts",
    [("325", [3, 2, 5]), ("1114", [1, 1, 1, 5]), ("1:1H", [1, 10, 1, 2]), ("T3", [100])],
)
def test_compressed_rle_strings_decode_like_pycocotools(text, counts):
    assert rle_string_to_counts(text) == counts


def test_rle_is_column_major_and_round_trips():
    # 2 rows x 3 columns; column-major runs: 1 background, 2 foreground, 3 background
    mask = decode_rle([1, 2, 3], height=2, width=3)
    np.testing.assert_array_equal(mask, [[False, True, False], [True, False, False]])
    rng = np.random.default_rng(1)
    random_mask = rng.random((HEIGHT, WIDTH)) < 0.3
    for compressed in (True, False):
        rle = encode_rle(random_mask, compressed=compressed)
        assert rle["size"] == [HEIGHT, WIDTH]
        np.testing.assert_array_equal(decode_rle(rle["counts"], HEIGHT, WIDTH), random_mask)


def test_rle_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="cover"):
        decode_rle([1, 2, 3], height=4, width=4)


# ---------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------


def test_a_tiny_dataset_converts_to_an_ultralytics_segment_dataset(dataset, tmp_path, monkeypatch):
    import ultralytics.data.utils
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    out = tmp_path / "out"
    summary = convert(dataset, out, val_fraction=0.4)
    assert summary["converted"] == 5 and summary["skipped_total"] == 0, summary
    assert summary["items"]["train"] >= 1 and summary["items"]["val"] >= 1, summary["items"]
    assert summary["instances"]["lower_body"] == 10, "two trouser legs per item"

    spec = yaml.safe_load((out / "data.yaml").read_text())
    assert spec["path"] == str(out) and spec["train"] == "images/train" and spec["val"] == "images/val"
    assert spec["names"] == dict(enumerate(YOLO_CLASS_NAMES))
    assert spec["classes"] == "seed8" and spec["class_to_cihp"] == dict(DEFAULT_YOLO_CLASS_TO_CIHP)
    assert spec["source"] == dataset.url_of("train") and len(spec["fingerprint"]) == 16

    monkeypatch.setattr(
        ultralytics.data.utils, "check_font", lambda *args, **kwargs: None
    )  # would fetch a font
    with network_refused() as attempts:
        checked = check_det_dataset(str(out / "data.yaml"))
    assert attempts == [], f"the dataset check tried the network: {attempts}"
    assert checked["nc"] == 8
    loaded = YOLODataset(img_path=checked["train"], data=checked, task="segment", imgsz=128, augment=False)
    lines = sum(len(path.read_text().splitlines()) for path in (out / "labels" / "train").glob("*.txt"))
    assert sum(len(label["segments"]) for label in loaded.labels) == lines, "Ultralytics read other segments"

    for stem, split in splits_of(out).items():
        image = out / "images" / split / f"{stem}.jpg"
        source_bytes = dataset.read_bytes(f"train/{DIR_IMAGE}/{stem}.jpg")
        assert image.read_bytes() == source_bytes, f"{image} is not the source's bytes"
        labels = np.array(Image.open(io.BytesIO(dataset.read_bytes(f"train/{DIR_PARSE}/{stem}.png"))))
        polygons = parse_label_lines((out / "labels" / split / f"{stem}.txt").read_text(), WIDTH, HEIGHT)
        low = {k: v for k, v in per_class_iou(polygons, labels).items() if v <= MIN_IOU}
        assert not low, f"{stem}: labels read back with low IoU {low}"


def test_the_split_is_stable_when_an_item_is_added(dataset, tmp_path):
    out = tmp_path / "out"
    first = convert(dataset, out, val_fraction=0.4)
    before = splits_of(out)
    write_item(dataset, "00006_00", person_map(shift=5))
    second = convert(dataset, out, val_fraction=0.4)
    after = splits_of(out)
    assert set(after) == set(before) | {"00006_00"}
    moved = {stem for stem in before if before[stem] != after[stem]}
    assert not moved, f"adding an item moved {moved} between splits"
    assert first["fingerprint"] != second["fingerprint"], "the fingerprint must cover the new item"
    assert after == {stem: split_of(stem, 0.4) for stem in after}


def test_a_rerun_with_another_seed_leaves_no_stem_in_both_splits(dataset, tmp_path):
    out = tmp_path / "out"
    convert(dataset, out, val_fraction=0.4, seed=0)
    summary = convert(dataset, out, val_fraction=0.4, seed=7)
    found = splits_of(out)  # asserts no stem is in both
    assert found == {stem: split_of(stem, 0.4, seed=7) for stem in STEMS}
    images = {p.stem for split in ("train", "val") for p in (out / "images" / split).glob("*.jpg")}
    assert images == set(STEMS)
    assert summary["removed_stale"] == 2 * sum(split_of(s, 0.4, 0) != split_of(s, 0.4, 7) for s in STEMS)


def test_split_of_is_deterministic_and_close_to_the_fraction():
    stems = [f"{i:05d}_00" for i in range(2000)]
    val = sum(split_of(stem, 0.1) == "val" for stem in stems)
    assert 150 < val < 250, f"{val} of 2000 in val at fraction 0.1"
    assert [split_of(s, 0.1) for s in stems] == [split_of(s, 0.1) for s in stems]
    assert all(split_of(s, 0.0) == "train" for s in stems)


def test_cihp20_mode_keeps_every_label(dataset, tmp_path):
    out = tmp_path / "out"
    summary = convert(dataset, out, classes="cihp20", val_fraction=0.4)
    spec = yaml.safe_load((out / "data.yaml").read_text())
    assert len(spec["names"]) == 19 and spec["classes"] == "cihp20"
    assert spec["class_to_cihp"] == {label - 1: label for label in range(1, 20)}
    assert summary["instances"]["scarf"] == 5, "the logo is a class of its own in cihp20"
    assert summary["instances"]["torso_skin"] == 5


def test_coco_json_with_a_polygon_and_an_rle_annotation(tmp_path):
    images = Store(str(tmp_path / "images"))
    labels = person_map()
    images.write_bytes("shots/a.jpg", jpeg_of(labels))
    upper = (labels == Cihp.UPPER_CLOTHES) | (labels == Cihp.SCARF)
    hair = labels == Cihp.HAIR
    box = [42.0, 37.0, 86.0, 37.0, 86.0, 70.0, 42.0, 70.0]  # the upper clothes rectangle of person_map()
    document = {
        "images": [{"id": 1, "file_name": "shots/a.jpg", "width": WIDTH, "height": HEIGHT}],
        "categories": [{"id": 1, "name": "Upper-Body"}, {"id": 2, "name": "hair"}, {"id": 3, "name": "shoe"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [box], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "segmentation": encode_rle(hair), "iscrowd": 1},
            {"id": 12, "image_id": 1, "category_id": 3, "segmentation": [box], "iscrowd": 0},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(document))
    out = tmp_path / "out"
    summary = convert_dataset(ParserDatasetConfig(
        out=str(out), from_coco=str(tmp_path / "coco.json"), images=images.url, val_fraction=0.0
    ))  # fmt: skip
    assert summary["converted"] == 1 and summary["format"] == "coco"
    assert summary["unknown_categories"] == {"shoe": 1}
    assert (out / "images" / "train" / "a.jpg").read_bytes() == images.read_bytes("shots/a.jpg")
    polygons = parse_label_lines((out / "labels" / "train" / "a.txt").read_text(), WIDTH, HEIGHT)
    assert sorted(cls for cls, _ in polygons) == [0, 3], "one hair and one upper_body polygon"
    painted = rasterise_polygons(polygons, labels.shape)
    assert iou(painted == 0, hair) > MIN_IOU, "the RLE hair did not come back"
    assert iou(painted == 3, upper) > MIN_IOU, "the polygon upper body did not come back"


def test_uncompressed_rle_is_read_too(tmp_path):
    images = Store(str(tmp_path / "images"))
    labels = ring_map()
    images.write_bytes("r.jpg", jpeg_of(labels))
    face = labels == Cihp.FACE
    document = {
        "images": [{"id": 7, "file_name": "r.jpg"}],
        "categories": [{"id": 1, "name": "face"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": encode_rle(face, compressed=False)}
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(document))
    out = tmp_path / "out"
    config = ParserDatasetConfig(
        out=str(out), from_coco=str(tmp_path / "coco.json"), images=images.url, val_fraction=0
    )
    convert_dataset(config)
    polygons = parse_label_lines((out / "labels" / "train" / "r.txt").read_text(), WIDTH, HEIGHT)
    assert iou(rasterise_polygons(polygons, labels.shape) == 1, face) > MIN_IOU


def test_bad_items_are_skipped_with_reasons_in_the_report(dataset, tmp_path):
    labels = person_map()
    dataset.write_bytes(f"train/{DIR_IMAGE}/nolabel.jpg", jpeg_of(labels))
    dataset.write_bytes(f"train/{DIR_IMAGE}/broken.jpg", b"not a jpeg at all")
    dataset.write_bytes(f"train/{DIR_PARSE}/broken.png", encode_parse_png(labels))
    too_high = labels.copy()
    too_high[0, 0] = 25
    dataset.write_bytes(f"train/{DIR_IMAGE}/lip.jpg", jpeg_of(labels))
    dataset.write_bytes(f"train/{DIR_PARSE}/lip.png", png_l(too_high))
    dataset.write_bytes(f"train/{DIR_IMAGE}/small.jpg", jpeg_of(labels[:48, :64]))
    dataset.write_bytes(f"train/{DIR_PARSE}/small.png", encode_parse_png(labels))
    out = tmp_path / "out"
    summary = convert(dataset, out, val_fraction=0.4)
    expected = {"labels_out_of_range": 1, "missing_parse": 1, "size_mismatch": 1, "unreadable_image": 1}
    assert summary["converted"] == 5 and summary["skipped"] == expected, summary
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == expected
    assert {(s["stem"], s["reason"]) for s in report["skipped"]} == {
        ("lip", "labels_out_of_range"), ("nolabel", "missing_parse"),
        ("small", "size_mismatch"), ("broken", "unreadable_image"),
    }  # fmt: skip
    assert "25" in next(s["detail"] for s in report["skipped"] if s["stem"] == "lip")
    assert (
        not (out / "images" / "train" / "lip.jpg").exists()
        and not (out / "images" / "val" / "lip.jpg").exists()
    )


def test_s3_to_s3_writes_the_url_as_the_dataset_path(s3):
    source = Store(s3.url("source"), s3.storage_options)
    for index, stem in enumerate(STEMS[:3]):
        write_item(source, stem, person_map(shift=index), split="test")
    config = ParserDatasetConfig(
        out=s3.url("parser"), from_parse=s3.url("source"), split="test", storage_options=s3.storage_options
    )
    summary = convert_dataset(config)
    assert summary["converted"] == 3, summary
    spec = yaml.safe_load(s3.get("parser/data.yaml"))
    assert spec["path"] == s3.url("parser") and spec["source"] == s3.url("source", "test")
    keys = set(s3.keys("parser/"))
    assert {"parser/data.yaml", "parser/report.json"} <= keys
    assert sum(key.startswith("parser/labels/") for key in keys) == 3


# ---------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["parser-dataset", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: vitonprep parser-dataset" in text and "--from-coco" in text and "seed8" in text


def test_cli_json_prints_the_summary(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["parser-dataset", "--from-parse", dataset.url, "--out", str(out), "--split", "train",
                 "--val-fraction", "0.4", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["converted"] == 5 and sum(summary["items"].values()) == 5
    assert summary["data_yaml"].endswith("data.yaml") and "parser-dataset" not in captured.err, (
        "no bar with --json"
    )


def test_cli_text_summary_lists_splits_classes_and_skips(dataset, tmp_path, capsys):
    dataset.write_bytes(f"train/{DIR_IMAGE}/nolabel.jpg", jpeg_of(person_map()))
    code = main(
        ["parser-dataset", "--from-parse", dataset.url, "--out", str(tmp_path / "out"), "--no-progress"]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "train" in text and "val" in text and "lower_body" in text and "missing_parse" in text


def test_cli_exits_1_when_nothing_converts(tmp_path, capsys):
    root = Store(str(tmp_path / "source"))
    root.write_bytes(f"{DIR_IMAGE}/a.jpg", jpeg_of(person_map()))  # a split folder with no label maps
    out = tmp_path / "out"
    code = main(["parser-dataset", "--from-parse", root.url, "--out", str(out), "--json"])
    assert code == 1
    assert json.loads(capsys.readouterr().out)["skipped"] == {"missing_parse": 1}
    assert (out / "report.json").is_file() and not (out / "data.yaml").exists()


@pytest.mark.parametrize(
    "arguments",
    [
        ["--from-parse", "x", "--out", "y", "--val-fraction", "1.5"],
        ["--from-parse", "x", "--out", "y", "--classes", "lip"],
        ["--from-coco", "x.json", "--out", "y"],
        ["--out", "y"],
    ],
    ids=["fraction", "classes", "coco-without-images", "no-source"],
)
def test_cli_bad_arguments_exit_2(arguments, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["parser-dataset", *arguments])
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err
