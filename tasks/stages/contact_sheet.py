"""Contact sheets: small tiles of a dataset's outputs side by side, for people to look at."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from tasks.infra.store import Store
from vitonhd_models.contract import colourise_parse

TILE_WH = (192, 256)  # a quarter of 768x1024
OVERLAY_ALPHA = 0.55
LABEL_BAND = 18  # pixels of caption above each row


def overlay_parse(image_rgb: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The parse colours blended over the photo where the label is not background."""
    colours = colourise_parse(labels).astype(np.float32)
    blended = image_rgb.astype(np.float32)
    person = labels > 0
    blended[person] = (1 - alpha) * blended[person] + alpha * colours[person]
    return blended.round().astype(np.uint8)


def tile(array: np.ndarray | None) -> Image.Image:
    if array is None:
        return Image.new("RGB", TILE_WH, (40, 40, 40))
    image = Image.fromarray(array)
    return image.convert("RGB").resize(TILE_WH, Image.Resampling.BILINEAR)


def contact_sheet(rows: Sequence[tuple[str, Sequence[np.ndarray | None]]]) -> np.ndarray:
    """Rows of (caption, tiles) as one RGB image; a None tile is drawn as a dark placeholder."""
    columns = max((len(tiles) for _, tiles in rows), default=1)
    width, height = TILE_WH
    sheet = Image.new("RGB", (columns * width, max(1, len(rows)) * (height + LABEL_BAND)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, (caption, tiles) in enumerate(rows):
        top = index * (height + LABEL_BAND)
        draw.text((4, top + 3), caption, fill=(0, 0, 0))
        for column, array in enumerate(tiles):
            sheet.paste(tile(array), (column * width, top + LABEL_BAND))
    return np.asarray(sheet)


def thumbnail_data_uri(png_or_jpeg: bytes, height: int = 384) -> str:
    """An image scaled to `height` as a JPEG data URI, to embed in a Prefect markdown artifact."""
    import base64

    image = Image.open(io.BytesIO(png_or_jpeg)).convert("RGB")
    if image.height > height:
        image = image.resize((max(1, image.width * height // image.height), height), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def read_array(store: Store, rel: str | None) -> np.ndarray | None:
    if not rel or not store.exists(rel):
        return None
    with Image.open(io.BytesIO(store.read_bytes(rel))) as image:
        return np.asarray(image)


def dataset_contact_sheet(dataset: Store, rows: list[dict[str, Any]]) -> np.ndarray:
    """Person rows: photo, skeleton, parse overlay, agnostic, DensePose render (where we drew one). Garment rows:
    garment, mask.

    `rows` are items as `tasks.records.manifest.item_view` gives them.
    """
    sheet_rows = []
    for row in sorted(rows, key=lambda r: (r["kind"], r["key"])):
        caption = f"{row['kind']} {row['key']}: {row['status']}"
        if row["status"] != "ok":
            caption += f" ({row['error_code']})"
            sheet_rows.append((caption, [None]))
            continue
        if row["kind"] == "person":
            image = read_array(dataset, row["ingest_outputs"][0])
            labels = read_array(dataset, row["parse_outputs"][0])
            parse_tile = overlay_parse(image, labels) if image is not None and labels is not None else None
            skeleton = read_array(dataset, row["pose_outputs"][1])
            tiles = [image, skeleton, parse_tile, read_array(dataset, row["agnostic_outputs"][1])]
            if row.get("densepose_outputs"):  # none with --densepose none, a user's own render, older datasets
                tiles.append(read_array(dataset, row["densepose_outputs"][0]))
        else:
            tiles = [read_array(dataset, row["ingest_outputs"][0]), read_array(dataset, row["cloth_mask_outputs"][0])]
        sheet_rows.append((caption, tiles))
    return contact_sheet(sheet_rows)


def encode_png(sheet: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return buffer.getvalue()
