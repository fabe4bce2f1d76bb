"""A parser training set: person images + CIHP label maps (or COCO JSON) -> Ultralytics segmentation format.

Behind `vitonprep parser-dataset` (`flows/cli/parser_dataset.py`). Two layers, as in `tasks.tools.validate`:

- Pure functions on arrays and plain data, no storage: the class tables (`seed8`, the 8 classes of our
  YOLO parser, and `cihp20`), label maps -> one polygon per 8-connected region (`cihp_to_polygons`, holes
  joined to their outer contour by zero-width bridges), the inverse (`rasterise_polygons`), the label
  text format, COCO polygons and RLE (`decode_rle`), the per-stem split and the fingerprint.
- `convert_dataset(config)`: lists the source once, converts every item on a small thread pool (reads
  and writes through `Store`, atomic), removes outputs of earlier runs that are no longer part of the
  set, and writes `data.yaml` (last: it marks a finished dataset) and `report.json`.

Output at `--out`: `data.yaml`, `images/{train,val}/<stem>.<ext>` (the source bytes, unchanged) and
`labels/{train,val}/<stem>.txt`, one line per region: `<class> x1 y1 x2 y2 ...`, coordinates divided by
the image width and height (6 decimals). A pixel's coordinates are its centre's, so Ultralytics'
`polygon2mask` (`cv2.fillPoly` on the denormalised points) paints the region back.

Bad items (a missing or unreadable file, a label map with ids above 19 or of another size) are skipped
with a reason (`SKIP_REASONS`) and listed in `report.json`; they never stop the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import time
import typing
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
import yaml
from PIL import Image
from pydantic import Field, model_validator

from tasks.infra.errors import StorageError, StorageNotFoundError
from tasks.infra.store import Store
from tasks.infra.weight_cache import sha256_hex
from tasks.records.config import Config, StorageOptions
from tasks.stages.parse_yolo import DEFAULT_YOLO_CLASS_TO_CIHP, YOLO_CLASS_NAMES
from vitonhd_models.contract import (
    CIHP_LABEL_NAMES,
    CIHP_NUM_LABELS,
    DIR_IMAGE,
    DIR_PARSE,
    DIR_PARSE_VITONHD,
    Cihp,
    parse_name,
)

# ---------------------------------------------------------------------------------------------------
# Class tables
# ---------------------------------------------------------------------------------------------------

ClassSet = Literal["seed8", "cihp20"]
CLASS_SETS = SEED8, CIHP20 = typing.get_args(ClassSet)

NO_CLASS = 255  # background in a class map (`ClassTable.map`, `rasterise_polygons`): no class has this id

# seed8: DEFAULT_YOLO_CLASS_TO_CIHP (tasks.stages.parse_yolo, what the parser writes back) is the class -> CIHP
# table; CIHP -> class is its inverse plus the CIHP labels merged into a class on the way in.
SEED8_MERGED_CIHP = {
    int(Cihp.DRESS): YOLO_CLASS_NAMES.index("upper_body"),  # a dress is upper-body clothing for the agnostic
    int(Cihp.COAT): YOLO_CLASS_NAMES.index("upper_body"),
}
CIHP_TO_SEED8: dict[int, int] = {
    **{int(cihp): int(cls) for cls, cihp in DEFAULT_YOLO_CLASS_TO_CIHP.items()},
    **SEED8_MERGED_CIHP,
}


@dataclass(frozen=True)
class ClassTable:
    """A class set: class names (index = class id) and the CIHP <-> class tables.

    `cihp_to_class` may map several CIHP ids to one class; `class_to_cihp` names the one CIHP id a
    class stands for (what a parser trained on this set writes back). CIHP ids missing from
    `cihp_to_class` are background.
    """

    name: str
    names: tuple[str, ...]
    cihp_to_class: Mapping[int, int]
    class_to_cihp: Mapping[int, int]

    def lut(self) -> np.ndarray:
        """A 256-entry uint8 lookup table: CIHP id -> class id, NO_CLASS for background."""
        table = np.full(256, NO_CLASS, dtype=np.uint8)
        for cihp, cls in self.cihp_to_class.items():
            table[cihp] = cls
        return table

    def map(self, labels: np.ndarray) -> np.ndarray:
        """An (H, W) CIHP map -> the (H, W) uint8 class map (NO_CLASS where background)."""
        return self.lut()[np.asarray(labels, dtype=np.uint8)]


SEED8_TABLE = ClassTable(
    name=SEED8,
    names=tuple(YOLO_CLASS_NAMES),
    cihp_to_class=CIHP_TO_SEED8,
    class_to_cihp={int(k): int(v) for k, v in DEFAULT_YOLO_CLASS_TO_CIHP.items()},
)
CIHP20_TABLE = ClassTable(
    name=CIHP20,
    names=tuple(CIHP_LABEL_NAMES[1:]),  # class i-1 for CIHP label i; background is no class
    cihp_to_class={label: label - 1 for label in range(1, CIHP_NUM_LABELS)},
    class_to_cihp={label - 1: label for label in range(1, CIHP_NUM_LABELS)},
)
CLASS_TABLES = {SEED8: SEED8_TABLE, CIHP20: CIHP20_TABLE}


def class_table(name: str) -> ClassTable:
    """`seed8` or `cihp20` -> its ClassTable."""
    try:
        return CLASS_TABLES[name]
    except KeyError:
        raise ValueError(f"unknown class set {name!r}; expected one of {', '.join(CLASS_SETS)}") from None


def normalise_category_name(name: str) -> str:
    """COCO category name -> ours: lower case, `-` and spaces -> `_` ("Upper-Body" -> "upper_body")."""
    return "_".join(str(name).strip().lower().replace("-", " ").split())


def category_class(name: str, table: ClassTable) -> int | None:
    """The class a COCO category stands for: by class name, else by CIHP label name through the table
    ("pants" -> lower_body in seed8); None when neither matches (or the CIHP label is background)."""
    key = normalise_category_name(name)
    if key in table.names:
        return table.names.index(key)
    if key in CIHP_LABEL_NAMES:
        return table.cihp_to_class.get(CIHP_LABEL_NAMES.index(key))
    return None


# ---------------------------------------------------------------------------------------------------
# Masks <-> polygons
# ---------------------------------------------------------------------------------------------------

DEFAULT_MIN_AREA = 16  # pixels: smaller regions (and holes) are parsing noise, not worth a polygon
DEFAULT_EPSILON = 1.0  # pixels: cv2.approxPolyDP tolerance; keeps label files small, IoU barely moves
SIMPLIFY_MIN_IOU = 0.98  # a simplified region must keep this IoU with the exact one, else epsilon halves

Polygon = tuple[int, np.ndarray]  # (class id, (N, 2) float pixel coordinates x, y)


def _bridge(polygon: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Join `hole` into `polygon` by a zero-width bridge: from the polygon's point closest to the hole,
    once around the hole from its closest point, and back along the same segment."""
    distances = ((polygon[:, None, :] - hole[None, :, :]) ** 2).sum(axis=-1)
    i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
    around = np.roll(hole, -int(j), axis=0)
    return np.concatenate([polygon[: i + 1], around, around[:1], polygon[i:]])


def _hole_pixels(hole: np.ndarray, region: np.ndarray, at_least: int = 1) -> int:
    """Background pixels of `region` (uint8 0/1) inside the hole contour `hole` ((N, 2) int); 0 when
    its box cannot hold `at_least` (the contour runs over the region's pixels around the hole)."""
    x, y, w, h = cv2.boundingRect(hole)
    if (w - 2) * (h - 2) < at_least:
        return 0
    inside = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(inside, [hole - np.array([x, y])], 1)
    return int(np.count_nonzero(inside & (region[y : y + h, x : x + w] == 0)))


def _children(links: np.ndarray, parent: int) -> Iterator[int]:
    child = links[parent][2]
    while child != -1:
        yield int(child)
        child = links[child][0]


def _simplified(contour: np.ndarray, epsilon: float) -> np.ndarray:
    return cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2) if epsilon > 0 else contour.reshape(-1, 2)


def _bridged(outer: np.ndarray, holes: Sequence[np.ndarray], epsilon: float) -> np.ndarray | None:
    """The outer contour with every hole bridged in, each simplified at `epsilon`; None under 3 points."""
    merged = _simplified(outer, epsilon)
    if len(merged) < 3:
        return None
    for hole in holes:
        simple = _simplified(hole, epsilon)
        if len(simple) >= 3:
            merged = _bridge(merged, simple)
    return merged


def _fill(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(canvas, [polygon.astype(np.int32)], 1)
    return canvas.astype(bool)


def mask_to_polygons(
    mask: np.ndarray, min_area: int = DEFAULT_MIN_AREA, epsilon: float = DEFAULT_EPSILON
) -> list[np.ndarray]:
    """One polygon ((N, 2) float pixel coordinates) per 8-connected region of a boolean (H, W) mask.

    Regions under `min_area` pixels are dropped; holes of at least `min_area` pixels are joined to the
    outer contour by zero-width bridges (smaller holes are filled), so filling the polygon gives the
    region back with its holes. Contours are simplified with `cv2.approxPolyDP(epsilon)`; where that
    leaves the filled polygon under SIMPLIFY_MIN_IOU of the region (small or thin regions, whose
    convex edges the chords cut), epsilon is halved, down to the exact contour. Polygons left with
    fewer than 3 points are dropped.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is (H, W); got shape {mask.shape}")
    binary = (mask > 0).astype(np.uint8)
    bx, by, bw, bh = cv2.boundingRect(binary)  # components are found in the mask's bounding box only
    if bw * bh == 0:
        return []
    _, components, stats, _ = cv2.connectedComponentsWithStats(
        binary[by : by + bh, bx : bx + bw], connectivity=8
    )
    polygons = []
    for index in np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area):
        if index == 0:
            continue  # the background
        x, y, w, h = (int(v) for v in stats[index, :4])
        # The component alone, with a one-pixel frame so contours touching the image border close.
        region = np.zeros((h + 2, w + 2), dtype=np.uint8)
        region[1:-1, 1:-1] = components[y : y + h, x : x + w] == index
        contours, hierarchy = cv2.findContours(region, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if hierarchy is None:
            continue
        offset = np.array([bx + x - 1, by + y - 1])
        links = hierarchy[0]  # per contour: next, previous, first child, parent
        for outer_index in (k for k in range(len(contours)) if links[k][3] == -1):
            polygon = _region_polygon(region, contours, links, outer_index, min_area, epsilon)
            if polygon is not None:
                polygons.append((polygon + offset).astype(np.float64))
    return polygons


def _region_polygon(
    region: np.ndarray,
    contours: Sequence[np.ndarray],
    links: np.ndarray,
    outer_index: int,
    min_area: int,
    epsilon: float,
) -> np.ndarray | None:
    """One outer contour and its holes -> the simplified, bridged polygon (see `mask_to_polygons`)."""
    holes, target = [], region.astype(bool)
    for k in _children(links, outer_index):
        if _hole_pixels(contours[k].reshape(-1, 2), region, at_least=min_area) >= min_area:
            holes.append(contours[k])
        else:  # a small hole: filled, in the polygon and in the region it is measured against
            target |= _fill(contours[k].reshape(-1, 2), region.shape)
    target_pixels = np.count_nonzero(target)
    for tolerance in (epsilon, epsilon / 2, epsilon / 4):
        if tolerance <= 0:
            break
        candidate = _bridged(contours[outer_index], holes, tolerance)
        if candidate is None:
            continue
        filled = _fill(candidate, region.shape)
        overlap = np.count_nonzero(filled & target)
        if overlap >= SIMPLIFY_MIN_IOU * (np.count_nonzero(filled) + target_pixels - overlap):
            return candidate
    return _bridged(contours[outer_index], holes, 0.0)


def masks_to_polygons(
    masks: Mapping[int, np.ndarray], min_area: int = DEFAULT_MIN_AREA, epsilon: float = DEFAULT_EPSILON
) -> list[Polygon]:
    """{class id: boolean mask} -> [(class id, polygon)], classes in ascending order."""
    return [
        (int(cls), polygon)
        for cls in sorted(masks)
        for polygon in mask_to_polygons(masks[cls], min_area=min_area, epsilon=epsilon)
    ]


def cihp_to_polygons(
    labels: np.ndarray,
    class_table: ClassTable,
    min_area: int = DEFAULT_MIN_AREA,
    epsilon: float = DEFAULT_EPSILON,
) -> list[Polygon]:
    """An (H, W) map of CIHP ids -> [(class id, (N, 2) float pixel coordinates)], one per 8-connected
    region of each class of `class_table` (see `mask_to_polygons`)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map is (H, W); got shape {labels.shape}")
    classes = class_table.map(labels)
    present = [int(v) for v in np.flatnonzero(np.bincount(classes.ravel(), minlength=256)) if v != NO_CLASS]
    return masks_to_polygons({cls: classes == cls for cls in present}, min_area=min_area, epsilon=epsilon)


def rasterise_polygons(polygons: Iterable[Polygon], shape: tuple[int, int]) -> np.ndarray:
    """Paint [(class id, (N, 2) pixel coordinates)] into an (H, W) uint8 class map (NO_CLASS elsewhere),
    in order (a later polygon wins a shared pixel), the way Ultralytics rasterises label polygons."""
    out = np.full((int(shape[0]), int(shape[1])), NO_CLASS, dtype=np.uint8)
    for cls, points in polygons:
        cv2.fillPoly(out, [np.round(np.asarray(points)).astype(np.int32).reshape(-1, 2)], int(cls))
    return out


# ---------------------------------------------------------------------------------------------------
# Label files
# ---------------------------------------------------------------------------------------------------


def format_label_lines(polygons: Iterable[Polygon], width: int, height: int) -> str:
    """Ultralytics segment labels: `<class> x1 y1 x2 y2 ...` per polygon, normalised to 0..1, 6 decimals."""
    scale = np.array([float(width), float(height)])
    lines = []
    for cls, points in polygons:
        normalised = np.clip(np.asarray(points, dtype=np.float64).reshape(-1, 2) / scale, 0.0, 1.0)
        lines.append(f"{int(cls)} " + " ".join(f"{v:.6f}" for v in normalised.reshape(-1)))
    return "".join(line + "\n" for line in lines)


def parse_label_lines(text: str, width: int, height: int) -> list[Polygon]:
    """The inverse of `format_label_lines`: [(class id, (N, 2) pixel coordinates)]."""
    polygons = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 7 or len(fields) % 2 == 0:
            raise ValueError(
                f"label line {number}: expected '<class> x1 y1 x2 y2 x3 y3 ...', got {line[:80]!r}"
            )
        coords = np.array([float(v) for v in fields[1:]]).reshape(-1, 2) * np.array([width, height])
        polygons.append((int(fields[0]), coords))
    return polygons


# ---------------------------------------------------------------------------------------------------
# COCO segmentation: polygons and RLE (pycocotools' format, decoded here)
# ---------------------------------------------------------------------------------------------------


def rle_string_to_counts(text: str) -> list[int]:
    """pycocotools' compressed RLE string (`rleFrString`) -> run lengths.

    Each count is LEB128-like: 5 bits per character (offset by 48), bit 0x20 = more characters follow,
    bit 0x10 of the last one = sign; from the fourth count on it is stored as a difference to the count
    two before.
    """
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("compressed RLE string ends inside a count")
            char = ord(text[position]) - 48
            if not 0 <= char < 64:
                raise ValueError(f"compressed RLE string holds {text[position]!r}, not a count character")
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_rle(counts: str | Sequence[int], height: int, width: int) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list of run lengths) -> (H, W) bool mask.

    Runs alternate background / foreground, starting with background, over the pixels in column-major
    order (down the first column, then the next).
    """
    runs = rle_string_to_counts(counts) if isinstance(counts, str) else [int(v) for v in counts]
    if any(run < 0 for run in runs):
        raise ValueError("RLE holds a negative run length")
    if sum(runs) != height * width:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels; a {width}x{height} mask has {height * width}")
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return flat.reshape(width, height).T.copy()


def rasterise_coco_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation` (a list of flat polygons, or an RLE dict) -> (H, W) bool mask.

    Raises ValueError for anything malformed (odd coordinate counts, fewer than 3 points, RLE of another
    size).
    """
    if isinstance(segmentation, Mapping):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if size is None or counts is None:
            raise ValueError("an RLE segmentation needs 'size' and 'counts'")
        if [int(v) for v in size] != [height, width]:
            raise ValueError(f"RLE size {list(size)} differs from the image's [{height}, {width}]")
        return decode_rle(counts, height, width)
    if isinstance(segmentation, list) and segmentation:
        mask = np.zeros((height, width), dtype=np.uint8)
        for flat in segmentation:
            if not isinstance(flat, list) or len(flat) < 6 or len(flat) % 2:
                raise ValueError("a polygon is a flat list [x1, y1, x2, y2, ...] of at least 3 points")
            points = np.round(np.asarray(flat, dtype=np.float64).reshape(-1, 2)).astype(np.int32)
            cv2.fillPoly(mask, [points], 1)
        return mask.astype(bool)
    raise ValueError("segmentation is neither a list of polygons nor an RLE dict")


# ---------------------------------------------------------------------------------------------------
# Decoding inputs (bytes -> arrays), each failure a skip reason
# ---------------------------------------------------------------------------------------------------

SKIP_REASONS: dict[str, str] = {
    "missing_parse": "no label map (image-parse-v3/<stem>.png) next to the image",
    "missing_image": "the image is gone (COCO: its file_name is not under --images)",
    "unreadable_image": "the image does not decode",
    "unreadable_parse": "the label map does not decode as a PNG",
    "parse_not_label_ids": "the label map is not single-channel (P or L): a visualisation has lost the ids",
    "labels_out_of_range": f"the label map holds ids above {CIHP_NUM_LABELS - 1} (not CIHP)",
    "size_mismatch": "the label map (or the COCO image entry) and the image differ in size",
    "duplicate_stem": "another image has the same stem (labels are named by stem)",
    "read_error": "the storage refused a read",
    "conversion_error": "the conversion itself failed on this item (a bug: please report it)",
}


class ItemSkipped(Exception):
    """An item that cannot be converted: `reason` (a key of SKIP_REASONS) and a detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image, after decoding it (a truncated file fails)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning and friends
            with Image.open(io.BytesIO(data)) as image:
                size = image.size
                image.draft("L", (max(1, size[0] // 8), max(1, size[1] // 8)))  # JPEG: decode at 1/8 scale
                image.load()
    except Exception as error:  # noqa: BLE001  (Pillow raises many types for bad data)
        raise ItemSkipped("unreadable_image", f"{type(error).__name__}: {error}") from None
    return int(size[0]), int(size[1])


def decode_cihp_png(data: bytes) -> np.ndarray:
    """A label PNG (P or L mode, CIHP ids 0..19) -> (H, W) uint8 ids; else ItemSkipped with the reason."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            labels = np.array(image) if mode in ("P", "L") else None
    except Exception as error:  # noqa: BLE001
        raise ItemSkipped("unreadable_parse", f"{type(error).__name__}: {error}") from None
    if labels is None:
        raise ItemSkipped("parse_not_label_ids", f"mode {mode!r}")
    if labels.size and int(labels.max()) >= CIHP_NUM_LABELS:
        bad = sorted(int(v) for v in np.unique(labels) if v >= CIHP_NUM_LABELS)
        raise ItemSkipped("labels_out_of_range", f"ids {bad[:10]}")
    return labels.astype(np.uint8, copy=False)


# ---------------------------------------------------------------------------------------------------
# Split and fingerprint
# ---------------------------------------------------------------------------------------------------

TRAIN, VAL = "train", "val"
SPLITS = (TRAIN, VAL)


def split_of(stem: str, val_fraction: float, seed: int = 0) -> str:
    """ "train" or "val" for `stem`: a stable hash of (seed, stem) against `val_fraction`, so an item's
    split never depends on the other items (adding images moves none)."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return VAL if int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction else TRAIN


FINGERPRINT_CHARS = 16


def dataset_fingerprint(entries: Iterable[tuple[str, str, str]]) -> str:
    """sha256 over the sorted (stem, image sha256, label sha256) list, as short hex."""
    digest = hashlib.sha256()
    for stem, image_sha, label_sha in sorted(entries):
        digest.update(f"{stem}\t{image_sha}\t{label_sha}\n".encode())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ParserDatasetConfig(Config):
    """One conversion, validated once here. Exactly one of `from_parse` (a dataset root: `{split}/image/`
    + `{split}/image-parse-v3/`, or a split folder) and `from_coco` (a COCO JSON file URL, with `images`,
    the folder its `file_name`s are relative to)."""

    out: str = Field(description="Output root URL (data.yaml, images/, labels/)")
    from_parse: str | None = Field(None, description="Dataset root (or split folder) with image/ and image-parse-v3/")
    from_coco: str | None = Field(None, description="COCO instance segmentation JSON file URL")
    images: str | None = Field(None, description="With from_coco: the folder its file_names are under")
    classes: ClassSet = Field(SEED8, description="Class set: seed8 (what the YOLO parser maps back to CIHP) or cihp20")
    split: Literal["test", "train"] | None = Field(
        None, description="With from_parse: the split to read (default: the root's own image/, else its only split)"
    )
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of stems in val, by stable hash")
    seed: int = Field(0, description="Seed of the per-stem split hash")
    min_area: int = Field(DEFAULT_MIN_AREA, ge=1, description="Drop regions (and fill holes) under this many pixels")
    epsilon: float = Field(DEFAULT_EPSILON, ge=0.0, description="Polygon simplification tolerance in pixels")
    workers: int = Field(2, ge=1, description="Items converted at once")
    storage_options: StorageOptions = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ParserDatasetConfig:
        if (self.from_parse is None) == (self.from_coco is None):
            raise ValueError("give exactly one source: from_parse (CIHP label maps) or from_coco (COCO JSON)")
        if self.from_coco is not None and not self.images:
            raise ValueError("a COCO source needs images: the folder its file_names are relative to")
        if self.from_coco is not None and self.split is not None:
            raise ValueError("split applies to from_parse only")
        if self.images and self.from_coco is None:
            raise ValueError("images applies to from_coco only")
        return self


# ---------------------------------------------------------------------------------------------------
# Sources: list the items, load one (Store reads + the pure functions above)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceItem:
    stem: str
    image: str  # the image's path relative to the source's image folder
    ref: Any = None  # source-specific: the label map's name, or the COCO image entry and annotations


@dataclass
class Loaded:
    image_bytes: bytes
    width: int
    height: int
    label_sha: str
    polygons: list[Polygon]
    bad_annotations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Skipped:
    stem: str
    path: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"stem": self.stem, "path": self.path, "reason": self.reason, "detail": self.detail}


def _read(store: Store, rel: str, missing_reason: str) -> bytes:
    try:
        return store.read_bytes(rel)
    except (StorageNotFoundError, FileNotFoundError):
        raise ItemSkipped(missing_reason, store.url_of(rel)) from None
    except OSError as error:
        raise ItemSkipped("read_error", f"{type(error).__name__}: {error}") from None


def _image_items(names: Iterable[str]) -> tuple[list[SourceItem], list[Skipped]]:
    """Image file names -> items by stem (sorted); a second file with the same stem is skipped."""
    items: dict[str, SourceItem] = {}
    skipped = []
    for name in names:
        stem, suffix = posixpath.splitext(posixpath.basename(name))
        if suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if stem in items:
            skipped.append(Skipped(stem, name, "duplicate_stem", f"also {items[stem].image}"))
            continue
        items[stem] = SourceItem(stem, name)
    return [items[stem] for stem in sorted(items)], skipped


class CihpSource:
    """Person images and CIHP label maps: `<split>/image/<stem>.jpg` + `<split>/image-parse-v3/<stem>.png`
    (our output layout and the VITON-HD release; `image-parse/` is read where `image-parse-v3/` is absent)."""

    format = "cihp"

    def __init__(self, url: str, split: str | None, storage_options: Mapping[str, Any] | None = None):
        root = Store(url, dict(storage_options or {}))
        if split is not None and root.exists(split, DIR_IMAGE):
            folder = root.child(split)
        elif root.exists(DIR_IMAGE):
            folder = root
        elif split is not None:
            raise ValueError(f"no {DIR_IMAGE}/ folder under {root.url_of(split)} or {root.url_of()}")
        else:
            found = [name for name in ("train", "test") if root.exists(name, DIR_IMAGE)]
            if not found:
                raise ValueError(
                    f"no {DIR_IMAGE}/ folder under {root.url_of()}, nor under its train/ or test/"
                )
            if len(found) > 1:
                raise ValueError(f"{root.url_of()} holds both train/ and test/: choose one with --split")
            folder = root.child(found[0])
        self.folder = folder
        self.url = folder.url_of()
        self.parse_dir = next(
            (name for name in (DIR_PARSE, DIR_PARSE_VITONHD) if folder.exists(name)), DIR_PARSE
        )
        self.images = folder.child(DIR_IMAGE)
        self.parses = folder.child(self.parse_dir)

    def items(self) -> tuple[list[SourceItem], list[Skipped]]:
        items, skipped = _image_items(self.images.listdir())
        parse_names = set(self.parses.listdir())
        present = []
        for item in items:
            label = parse_name(item.stem)
            if label in parse_names:
                present.append(SourceItem(item.stem, item.image, label))
            else:
                skipped.append(
                    Skipped(
                        item.stem,
                        f"{DIR_IMAGE}/{item.image}",
                        "missing_parse",
                        f"no {self.parse_dir}/{label}",
                    )
                )
        return present, skipped

    def path_of(self, item: SourceItem) -> str:
        return f"{DIR_IMAGE}/{item.image}"

    def load(self, item: SourceItem, table: ClassTable, min_area: int, epsilon: float) -> Loaded:
        image_bytes = _read(self.images, item.image, "missing_image")
        width, height = image_size(image_bytes)
        label_bytes = _read(self.parses, item.ref, "missing_parse")
        labels = decode_cihp_png(label_bytes)
        if labels.shape != (height, width):
            raise ItemSkipped(
                "size_mismatch", f"image {width}x{height}, label map {labels.shape[1]}x{labels.shape[0]}"
            )
        polygons = cihp_to_polygons(labels, table, min_area=min_area, epsilon=epsilon)
        return Loaded(image_bytes, width, height, sha256_hex(label_bytes), polygons)


def _file_store(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Store, str]:
    """A file URL -> (the Store of its folder, its name)."""
    parent, _, name = url.rstrip("/").rpartition("/")
    return Store(parent or ".", dict(storage_options or {})), name


class CocoSource:
    """COCO instance segmentation JSON (what labelling tools export) and the folder of its images.

    Categories map to classes by name (`category_class`); annotations of other categories are counted in
    `unknown_categories` and skipped. An image's annotations are painted into one mask per class (polygons
    and RLE alike) and go through the same polygon extraction as label maps.
    """

    format = "coco"

    def __init__(
        self,
        coco_url: str,
        images_url: str,
        table: ClassTable,
        storage_options: Mapping[str, Any] | None = None,
    ):
        store, name = _file_store(coco_url, storage_options)
        try:
            document = json.loads(store.read_bytes(name))
        except json.JSONDecodeError as error:
            raise ValueError(f"{coco_url} is not JSON: {error}") from None
        if not isinstance(document, dict) or not isinstance(document.get("images"), list):
            raise TypeError(f"{coco_url} is not a COCO file: no 'images' list")
        self.url = store.url_of(name)
        self.images = Store(images_url, dict(storage_options or {}))
        self.table = table
        categories = {c["id"]: str(c.get("name", c["id"])) for c in document.get("categories", [])}
        self.category_classes = {cid: category_class(cname, table) for cid, cname in categories.items()}
        self.unknown_categories: Counter[str] = Counter()
        self.bad_annotations: list[dict[str, Any]] = []
        entries = {
            entry["id"]: entry for entry in document["images"] if "id" in entry and "file_name" in entry
        }
        by_image: dict[Any, list[dict[str, Any]]] = {image_id: [] for image_id in entries}
        for annotation in document.get("annotations", []):
            category = annotation.get("category_id")
            if annotation.get("image_id") not in by_image:
                self.bad_annotations.append(
                    {"annotation": annotation.get("id"), "image": annotation.get("image_id"),
                     "reason": "unknown_image_id"}
                )  # fmt: skip
            elif self.category_classes.get(category) is None:
                self.unknown_categories[categories.get(category, f"<category id {category}>")] += 1
            else:
                by_image[annotation["image_id"]].append(annotation)
        self._entries = entries
        self._by_image = by_image

    def items(self) -> tuple[list[SourceItem], list[Skipped]]:
        ordered = sorted(self._entries.values(), key=lambda entry: str(entry["file_name"]))
        items, skipped = _image_items(str(entry["file_name"]) for entry in ordered)
        refs = {str(entry["file_name"]): entry for entry in ordered}
        return [
            SourceItem(i.stem, i.image, (refs[i.image], self._by_image[refs[i.image]["id"]])) for i in items
        ], skipped

    def path_of(self, item: SourceItem) -> str:
        return item.image

    def load(self, item: SourceItem, table: ClassTable, min_area: int, epsilon: float) -> Loaded:
        entry, annotations = item.ref
        image_bytes = _read(self.images, item.image, "missing_image")
        width, height = image_size(image_bytes)
        declared = (entry.get("width"), entry.get("height"))
        if None not in declared and (int(declared[0]), int(declared[1])) != (width, height):
            raise ItemSkipped(
                "size_mismatch", f"image {width}x{height}, COCO entry {declared[0]}x{declared[1]}"
            )
        masks: dict[int, np.ndarray] = {}
        bad = []
        canonical = []
        for annotation in sorted(annotations, key=lambda a: str(a.get("id"))):
            cls = int(self.category_classes[annotation.get("category_id")])
            try:
                mask = rasterise_coco_segmentation(annotation.get("segmentation"), height, width)
            except (ValueError, TypeError) as error:
                bad.append({"annotation": annotation.get("id"), "image": item.image, "reason": str(error)})
                continue
            masks[cls] = masks[cls] | mask if cls in masks else mask
            canonical.append([table.names[cls], annotation.get("segmentation")])
        polygons = masks_to_polygons(masks, min_area=min_area, epsilon=epsilon)
        label_sha = sha256_hex(json.dumps(canonical, sort_keys=True).encode())
        return Loaded(image_bytes, width, height, label_sha, polygons, bad)


# ---------------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------------

DATA_YAML = "data.yaml"
REPORT_JSON = "report.json"


@dataclass(frozen=True)
class Converted:
    stem: str
    split: str
    image_name: str
    image_sha: str
    label_sha: str
    instances: Mapping[int, int]
    bad_annotations: Sequence[dict[str, Any]] = ()


def _convert_item(
    source, item: SourceItem, out: Store, config: ParserDatasetConfig, table: ClassTable
) -> Converted:
    loaded = source.load(item, table, config.min_area, config.epsilon)
    split = split_of(item.stem, config.val_fraction, config.seed)
    image_name = item.stem + posixpath.splitext(item.image)[1]
    out.write_bytes(f"images/{split}/{image_name}", loaded.image_bytes)
    out.write_text(
        f"labels/{split}/{item.stem}.txt", format_label_lines(loaded.polygons, loaded.width, loaded.height)
    )
    return Converted(
        stem=item.stem,
        split=split,
        image_name=image_name,
        image_sha=sha256_hex(loaded.image_bytes),
        label_sha=loaded.label_sha,
        instances=Counter(cls for cls, _ in loaded.polygons),
        bad_annotations=loaded.bad_annotations,
    )


def _remove_stale(out: Store, converted: Sequence[Converted]) -> int:
    """Delete images and labels in the four output folders that this run did not write (items gone from
    the source, or moved by another seed or fraction), so the folders hold exactly the current set."""
    keep = {f"images/{c.split}/{c.image_name}" for c in converted}
    keep |= {f"labels/{c.split}/{c.stem}.txt" for c in converted}
    removed = 0
    for kind in ("images", "labels"):
        for split in SPLITS:
            for name in out.listdir(f"{kind}/{split}"):
                rel = f"{kind}/{split}/{name}"
                if rel not in keep:
                    out.remove(rel)
                    removed += 1
    return removed


def data_yaml_document(
    out: Store, table: ClassTable, source_url: str, fingerprint: str, config: ParserDatasetConfig
) -> dict[str, Any]:
    """The `data.yaml` mapping: Ultralytics' keys plus ours (classes, class_to_cihp, source, fingerprint)."""
    return {
        "path": out.root if out.is_local else out.url_of(),
        "train": f"images/{TRAIN}",
        "val": f"images/{VAL}",
        "names": dict(enumerate(table.names)),
        "classes": table.name,
        "class_to_cihp": {int(k): int(v) for k, v in sorted(table.class_to_cihp.items())},
        "source": source_url,
        "fingerprint": fingerprint,
        "conversion": {
            "val_fraction": config.val_fraction,
            "seed": config.seed,
            "min_area": config.min_area,
            "epsilon": config.epsilon,
        },
    }


def convert_dataset(
    config: ParserDatasetConfig, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Convert the configured source into an Ultralytics segmentation dataset at `config.out`.

    Returns the summary (also in `report.json`, with the skipped items). `summary["converted"] == 0`
    means nothing could be converted: `report.json` is written, `data.yaml` is not.
    """
    started = time.perf_counter()
    table = class_table(config.classes)
    if config.from_coco is not None:
        source: CihpSource | CocoSource = CocoSource(
            config.from_coco, config.images, table, config.storage_options
        )
    else:
        source = CihpSource(config.from_parse, config.split, config.storage_options)
    out = Store(config.out, dict(config.storage_options))
    items, skipped = source.items()
    converted: list[Converted] = []
    total = len(items)
    if progress:
        progress(0, total)
    with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="parser-dataset") as pool:
        futures = {pool.submit(_convert_item, source, item, out, config, table): item for item in items}
        for done, future in enumerate(as_completed(futures), start=1):
            item = futures[future]
            try:
                converted.append(future.result())
            except ItemSkipped as skip:
                skipped.append(Skipped(item.stem, source.path_of(item), skip.reason, skip.detail))
            except StorageError:
                raise  # a failed write: the output is incomplete, the run must fail
            except Exception as error:  # noqa: BLE001  (one bad item never stops the run)
                detail = f"{type(error).__name__}: {error}"
                skipped.append(Skipped(item.stem, source.path_of(item), "conversion_error", detail))
            if progress:
                progress(done, total)
    converted.sort(key=lambda c: c.stem)
    skipped.sort(key=lambda s: (s.stem, s.reason))
    bad_annotations = list(getattr(source, "bad_annotations", [])) + [
        bad for c in converted for bad in c.bad_annotations
    ]
    removed = _remove_stale(out, converted) if converted else 0
    fingerprint = dataset_fingerprint((c.stem, c.image_sha, c.label_sha) for c in converted)

    instances = Counter()
    for c in converted:
        instances.update(c.instances)
    items_per_split = Counter(c.split for c in converted)
    warnings_: list[str] = []
    for split in SPLITS:
        if converted and not items_per_split[split]:
            warnings_.append(
                f"the {split} split is empty (Ultralytics needs images in both): "
                f"change --val-fraction ({config.val_fraction}) or --seed"
            )
    summary: dict[str, Any] = {
        "out": out.url_of(),
        "source": source.url,
        "format": source.format,
        "classes": table.name,
        "fingerprint": fingerprint if converted else None,
        "converted": len(converted),
        "items": {split: items_per_split[split] for split in SPLITS},
        "instances": {name: instances[index] for index, name in enumerate(table.names)},
        "empty": sum(1 for c in converted if not c.instances),
        "skipped": dict(sorted(Counter(s.reason for s in skipped).items())),
        "skipped_total": len(skipped),
        "unknown_categories": dict(sorted(getattr(source, "unknown_categories", Counter()).items())),
        "bad_annotations": len(bad_annotations),
        "removed_stale": removed,
        "data_yaml": None,
        "report": out.url_of(REPORT_JSON),
        "warnings": warnings_,
    }
    if converted:
        document = data_yaml_document(out, table, source.url, fingerprint, config)
        out.write_text(DATA_YAML, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
        summary["data_yaml"] = out.url_of(DATA_YAML)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    report = {
        "summary": summary,
        "counts": summary["skipped"],
        "reasons": {reason: SKIP_REASONS[reason] for reason in summary["skipped"]},
        "skipped": [s.to_dict() for s in skipped],
        "unknown_categories": summary["unknown_categories"],
        "bad_annotations": bad_annotations,
    }
    out.write_text(REPORT_JSON, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return summary
