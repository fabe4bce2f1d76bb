"""Read a VITON-HD dataset (ours or the official layout) into the tensors of contract §1.8.

A sample is one (person, cloth) pair. `load_pair` reads its files through a `Files` (a `tasks.infra.store.Store`) and returns the
dict VITON-HD's `datasets.py` returns (same keys, shapes and value ranges), optionally with the training
targets. `PairDataset` wraps it for a `DataLoader`; a pair that cannot be read becomes `None`, which
`collate_pairs` drops, so one bad file never stops an epoch.

Everything here is deterministic: the only randomness of the pipeline (the seg noise channel and the
ALIAS noise) lives in `vitonhd_models.pipeline` and is seeded there.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vitonhd_models import contract
from vitonhd_models.agnostic import RECIPE_HRVITON, RECIPE_VITONHD, image_agnostic, parse_agnostic
from vitonhd_models.errors import BAD_INPUT, MISSING_INPUT, ItemError
from vitonhd_models.files import Files
from vitonhd_models.openpose import keypoints_from_openpose_json
from vitonhd_models.pairs import parse_pairs
from vitonhd_models.parse_maps import LabelMapError, label_ids

log = logging.getLogger(__name__)

# How the clothing-agnostic person image is obtained. VITON-HD computes it online with its own recipe
# (contract §1.7, §0 item 9), so that is what the official checkpoints saw; "disk" reads agnostic-v3.2/.
AGNOSTIC_DISK = "disk"
AGNOSTIC_SOURCES = (RECIPE_VITONHD, RECIPE_HRVITON, AGNOSTIC_DISK)

NUM_GROUPS_7 = len(contract.GROUP13_TO_GROUP7)
UPPER_GROUP_13 = 3  # contract §1.4: 13-group "upper" (CIHP 5, 6, 7)
UPPER_GROUP_7 = 2  # contract §1.4: 7-group "upper"; §1.8 uses parse7[:, 2:3] as the cloth region


@dataclass(frozen=True)
class DatasetLayout:
    """Folder names under `<root>/<split>/`: ours (HR-VITON's release) or VITON-HD's datasets.py."""

    name: str
    parse: str
    pose_img: str
    pose_json: str
    parse_agnostic: str | None  # None: computed online from the parse (contract §1.6)


LAYOUT_OURS = DatasetLayout(
    "ours", contract.DIR_PARSE, contract.DIR_POSE_IMG, contract.DIR_POSE_JSON, contract.DIR_PARSE_AGNOSTIC
)
LAYOUT_VITONHD = DatasetLayout(
    "vitonhd",
    contract.DIR_PARSE_VITONHD,
    contract.DIR_POSE_IMG_VITONHD,
    contract.DIR_POSE_JSON_VITONHD,
    None,
)


def detect_split_layout(split_store: Files) -> DatasetLayout:
    """Ours when `image-parse-v3/` exists, VITON-HD's when `image-parse/` does; else a ValueError."""
    for layout in (LAYOUT_OURS, LAYOUT_VITONHD):
        if split_store.isdir(layout.parse):
            return layout
    raise ValueError(
        f"{split_store.url} is not a VITON-HD dataset split: neither {contract.DIR_PARSE}/ nor "
        f"{contract.DIR_PARSE_VITONHD}/ exists there"
    )


# ---- Pairs ---------------------------------------------------------------------------------------


def read_pairs(root: Files, split: str) -> list[tuple[str, str]]:
    """The pairs of `<root>/<split>_pairs.txt`, next to the split folder (contract §1.1)."""
    name = contract.pairs_file_name(split)
    return parse_pairs(root.read_text(name), root.url_of(name))


def stem_of(name: str) -> str:
    """`x.jpg` -> `x`: the official code derives every other name with `.replace('.jpg', ...)`."""
    if not name.endswith(".jpg") or name.count(".jpg") != 1:
        raise ItemError(BAD_INPUT, f"{name!r}: dataset names end in a single lowercase .jpg (contract §1.1)")
    return name[: -len(".jpg")]


# ---- Reading one pair ----------------------------------------------------------------------------


def _read(store: Files, *parts: str) -> bytes:
    try:
        return store.read_bytes(*parts)
    except FileNotFoundError as exc:
        raise ItemError(MISSING_INPUT, f"{'/'.join(parts)} is missing") from exc


def _open_image(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ItemError(BAD_INPUT, f"{what} is not a readable image: {exc}") from exc
    if image.size != contract.IMAGE_SIZE_WH:
        raise ItemError(
            BAD_INPUT,
            f"{what} is {image.size[0]}x{image.size[1]}; the contract fixes "
            f"{contract.IMAGE_WIDTH}x{contract.IMAGE_HEIGHT} (contract §1.2)",
        )
    return image


def _rgb(image: Image.Image, what: str) -> np.ndarray:
    if image.mode not in ("RGB", "L", "P", "RGBA"):
        raise ItemError(BAD_INPUT, f"{what} has mode {image.mode}; expected RGB")
    return np.asarray(image.convert("RGB"))


def _labels(image: Image.Image, what: str) -> np.ndarray:
    """Parse maps hold raw CIHP indices (contract §1.3): P or L mode, values 0..19."""
    try:
        return label_ids(image, what)
    except LabelMapError as error:
        raise ItemError(BAD_INPUT, str(error)) from None


def _resize_rgb(array: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if array.shape[:2] == size_hw:
        return array
    return np.asarray(Image.fromarray(array).resize(size_hw[::-1], Image.BILINEAR))


def _resize_labels(array: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if array.shape[:2] == size_hw:
        return array
    return np.asarray(Image.fromarray(array).resize(size_hw[::-1], Image.NEAREST))


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1] (ToTensor then Normalize(0.5, 0.5), §1.1)."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def group_onehot(labels_cihp: np.ndarray, groups: dict[int, tuple[int, ...]] = contract.CIHP_TO_GROUP13) -> torch.Tensor:
    """(H, W) CIHP ids -> (len(groups), H, W) float one-hot of the grouped labels (contract §1.4)."""
    labels = torch.from_numpy(labels_cihp.astype(np.int64))
    onehot = torch.zeros(contract.CIHP_NUM_LABELS, *labels.shape).scatter_(0, labels[None], 1.0)
    grouped = torch.zeros(len(groups), *labels.shape)
    for group, ids in groups.items():
        grouped[group] = onehot[list(ids)].sum(0)
    return grouped


def merge_13_to_7(parse13: torch.Tensor) -> torch.Tensor:
    """(b, 13, H, W) -> (b, 7, H, W) by summing 13-group channels (contract §1.4, second table)."""
    merged = parse13.new_zeros(parse13.shape[0], NUM_GROUPS_7, *parse13.shape[2:])
    for group, ids in contract.GROUP13_TO_GROUP7.items():
        merged[:, group] = parse13[:, list(ids)].sum(1)
    return merged


def load_pair(
    split_store: Files,
    layout: DatasetLayout,
    person: str,
    cloth: str,
    size_hw: tuple[int, int] = (contract.IMAGE_HEIGHT, contract.IMAGE_WIDTH),
    agnostic: str = RECIPE_VITONHD,
    targets: bool = False,
) -> dict:
    """One pair's tensors at `size_hw`, keyed as VITON-HD's datasets.py (contract §1.1, §1.8).

    Returns `img_name, c_name, img, img_agnostic, parse_agnostic (13), pose (3), cloth (3), cloth_mask (1)`
    and, with `targets`, `parse` (the person's own 13-group parse) and `parse_cloth` (its upper-clothes
    channel) for training. Files are read at 1024x768 and derived maps computed there; then images are
    resized bilinearly and label maps by nearest neighbour. Raises ItemError for a missing or malformed file
    or unusable keypoints.
    """
    if agnostic not in AGNOSTIC_SOURCES:
        raise ValueError(f"agnostic must be one of {AGNOSTIC_SOURCES}, got {agnostic!r}")
    stem, cloth_stem = stem_of(person), stem_of(cloth)
    image = _rgb(_open_image(_read(split_store, contract.DIR_IMAGE, person), f"image/{person}"), f"image/{person}")
    parse_path = f"{layout.parse}/{contract.parse_name(stem)}"
    parse = _labels(_open_image(_read(split_store, parse_path), parse_path), parse_path)
    json_path = f"{layout.pose_json}/{contract.keypoints_json_name(stem)}"
    try:
        keypoints = keypoints_from_openpose_json(json.loads(_read(split_store, json_path)))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ItemError(BAD_INPUT, f"{json_path}: {exc}") from exc
    pose_path = f"{layout.pose_img}/{contract.rendered_pose_name(stem)}"
    pose = _open_image(_read(split_store, pose_path), pose_path)
    if pose.mode != "RGB":  # contract §1.1: normalised with 3 means, RGBA fails
        raise ItemError(BAD_INPUT, f"{pose_path} has mode {pose.mode}; the rendered pose is RGB")
    cloth_path = f"{contract.DIR_CLOTH}/{cloth}"
    cloth_rgb = _rgb(_open_image(_read(split_store, cloth_path), cloth_path), cloth_path)
    mask_path = f"{contract.DIR_CLOTH_MASK}/{contract.cloth_mask_name(cloth_stem)}"
    mask = _open_image(_read(split_store, mask_path), mask_path)
    if mask.mode != "L":  # contract §1.1: an RGB mask would become (1, H, W, 3)
        raise ItemError(BAD_INPUT, f"{mask_path} has mode {mask.mode}; cloth masks are single-channel")

    if layout.parse_agnostic is not None:
        path = f"{layout.parse_agnostic}/{contract.parse_agnostic_name(stem)}"
        parse_ag = _labels(_open_image(_read(split_store, path), path), path)
    else:
        parse_ag = parse_agnostic(parse, keypoints)
    if agnostic == AGNOSTIC_DISK:
        path = f"{contract.DIR_AGNOSTIC}/{contract.agnostic_name(stem)}"
        img_ag = _rgb(_open_image(_read(split_store, path), path), path)
    else:
        img_ag = image_agnostic(image, parse, keypoints, recipe=agnostic)  # ItemError on bad keypoints

    cloth_mask = (_resize_labels(np.asarray(mask), size_hw) >= contract.MASK_THRESHOLD).astype(np.float32)
    sample = {
        "img_name": person,
        "c_name": cloth,
        "img": image_tensor(_resize_rgb(image, size_hw)),
        "img_agnostic": image_tensor(_resize_rgb(img_ag, size_hw)),
        "parse_agnostic": group_onehot(_resize_labels(parse_ag, size_hw)),
        "pose": image_tensor(_resize_rgb(np.asarray(pose), size_hw)),
        "cloth": image_tensor(_resize_rgb(cloth_rgb, size_hw)),
        "cloth_mask": torch.from_numpy(cloth_mask)[None],
    }
    if targets:
        parse13 = group_onehot(_resize_labels(parse, size_hw))
        sample["parse"] = parse13
        sample["parse_cloth"] = parse13[UPPER_GROUP_13 : UPPER_GROUP_13 + 1].clone()
    return sample


class PairDataset(torch.utils.data.Dataset):
    """The pairs of one split as samples for a DataLoader; unreadable pairs come back as None."""

    def __init__(
        self,
        split_store: Files,
        pairs: Sequence[tuple[str, str]],
        size_hw: tuple[int, int] = (contract.IMAGE_HEIGHT, contract.IMAGE_WIDTH),
        agnostic: str = RECIPE_VITONHD,
        targets: bool = False,
        layout: DatasetLayout | None = None,
    ):
        self.split_store = split_store
        self.layout = layout or detect_split_layout(split_store)
        self.pairs = list(pairs)
        self.size_hw = size_hw
        self.agnostic = agnostic
        self.targets = targets

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict | None:
        person, cloth = self.pairs[index]
        try:
            return load_pair(
                self.split_store, self.layout, person, cloth, self.size_hw, self.agnostic, self.targets
            )
        except ItemError as exc:
            log.warning("skipping pair %s %s: %s", person, cloth, exc)
            return None


def collate_pairs(samples: Sequence[dict | None]) -> dict | None:
    """Stack samples into a batch (strings as lists), dropping the None of unreadable pairs."""
    samples = [sample for sample in samples if sample is not None]
    if not samples:
        return None
    return torch.utils.data.default_collate(samples)
