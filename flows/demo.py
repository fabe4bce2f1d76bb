"""`vitonprep demo`: a small real catalog from photos that installed packages ship, run end to end.

Persons: scikit-image's astronaut (a portrait), Ultralytics' bus.jpg (several people of one size,
refused as several_persons) and zidane.jpg (two people: several_persons too), scikit-image's cat
(no person at all).
Garments: product shots rendered here (plain backgrounds, as catalogs photograph them).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from flows.local import run_flow
from tasks.infra.store import Store
from tasks.stages.contact_sheet import dataset_contact_sheet
from vitonhd_models import contract

# Garments to render: (name, body colour, background colour, sleeve length as a fraction).
DEMO_GARMENTS = (
    ("red-tee", (200, 30, 40), (250, 250, 250), 0.18),
    ("navy-longsleeve", (30, 40, 90), (235, 235, 235), 0.42),
    ("cream-tee", (236, 226, 200), (255, 255, 255), 0.2),
)


def render_garment(body_rgb: tuple[int, int, int], background_rgb: tuple[int, int, int], sleeve: float) -> Image.Image:
    """A front-view top on a plain background, 768x1024, like a catalog product shot."""
    width, height = contract.IMAGE_SIZE_WH
    image = Image.new("RGB", (width, height), background_rgb)
    draw = ImageDraw.Draw(image)
    cx, top, bottom = width // 2, int(height * 0.18), int(height * 0.85)
    shoulder, waist = int(width * 0.27), int(width * 0.23)
    sleeve_drop = int(height * sleeve)
    outline = [
        (cx - 70, top), (cx - shoulder, top + 30),
        (cx - shoulder - 120, top + 60 + sleeve_drop), (cx - shoulder - 40, top + 110 + sleeve_drop),
        (cx - waist, top + 200), (cx - waist, bottom), (cx + waist, bottom), (cx + waist, top + 200),
        (cx + shoulder + 40, top + 110 + sleeve_drop), (cx + shoulder + 120, top + 60 + sleeve_drop),
        (cx + shoulder, top + 30), (cx + 70, top),
    ]
    shade = tuple(max(0, c - 35) for c in body_rgb)
    draw.polygon(outline, fill=body_rgb, outline=shade)
    draw.chord((cx - 70, top - 50, cx + 70, top + 60), 0, 180, fill=background_rgb)  # the neckline
    draw.line([(cx, top + 60), (cx, bottom)], fill=shade, width=2)  # a placket seam
    return image


def demo_persons() -> dict[str, bytes]:
    """Person photos that installed packages ship, as encoded files (key -> bytes)."""
    import skimage.data
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    persons = {name: (assets / name).read_bytes() for name in ("bus.jpg", "zidane.jpg")}
    for name, array in (("astronaut.png", skimage.data.astronaut()), ("cat.png", skimage.data.chelsea())):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        persons[name] = buffer.getvalue()
    return persons


def build_demo_catalog(catalog: Store) -> None:
    for key, data in demo_persons().items():
        catalog.write_bytes(f"persons/{key}", data)
    for name, body, background, sleeve in DEMO_GARMENTS:
        buffer = io.BytesIO()
        render_garment(body, background, sleeve).save(buffer, format="PNG")
        catalog.write_bytes(f"garments/{name}.png", buffer.getvalue())


def run_demo(out_dir: str = "demo-output", workers: int | None = None, show_progress: bool = True) -> dict[str, Any]:
    from tasks.records.config import RunPolicy
    from tasks.records.manifest import item_view, read_run
    from tasks.stages.registry import PreprocessConfig

    out_dir = os.path.abspath(out_dir)
    catalog = Store(os.path.join(out_dir, "catalog"))
    build_demo_catalog(catalog)
    dataset = Store(os.path.join(out_dir, "dataset"))
    config = PreprocessConfig(catalog=catalog.url, out=dataset.url, shard_size=4, workers=workers)
    # The cat is there to show how a photo without a person is reported, not to fail the demo.
    summary = run_flow(config, policy=RunPolicy(max_failed_fraction=1.0), show_progress=show_progress)
    rows = item_view(read_run(dataset, config.split, summary["run_id"]))
    sheet = dataset_contact_sheet(dataset, rows)
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    sheet_path = os.path.join(out_dir, "contact_sheet.png")
    Store(out_dir).write_bytes("contact_sheet.png", buffer.getvalue())
    Store(out_dir).write_text("summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return {"summary": summary, "contact_sheet": sheet_path, "dataset": dataset.url, "catalog": catalog.url}
