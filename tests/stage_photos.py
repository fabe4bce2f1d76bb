"""The photos the speed-change guard compares on: the sample photos (and their mirror images) and the
demo's photos, each as the ingest stage hands it on (fitted onto the canvas, JPEG-encoded, decoded)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tasks.stages.normalize import Ingested, decode_image, decode_rgb, encode_jpeg, fit_to_canvas


def _ingested(data: bytes) -> Ingested:
    canvas, fit = fit_to_canvas(np.asarray(decode_image(data)))
    jpeg = encode_jpeg(canvas)
    return Ingested(decode_rgb(jpeg), fit, jpeg)


def _mirrored(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, format="PNG")
    return buffer.getvalue()


def guard_photos(samples: Path) -> dict[str, dict[str, Ingested]]:
    """kind ("person", "garment") -> name -> Ingested."""
    from flows.demo import DEMO_GARMENTS, demo_persons, render_garment

    sources: dict[str, dict[str, bytes]] = {"person": {}, "garment": {}}
    for folder, kind in (("image", "person"), ("cloth", "garment")):
        for path in sorted((samples / folder).glob("*.jpg")):
            sources[kind][path.stem] = path.read_bytes()
            sources[kind][f"{path.stem}-mirrored"] = _mirrored(path.read_bytes())
    for key, data in demo_persons().items():
        if key != "cat.png":
            sources["person"][f"demo-{Path(key).stem}"] = data
    for name, body, background, sleeve in DEMO_GARMENTS:
        buffer = io.BytesIO()
        render_garment(body, background, sleeve).save(buffer, format="PNG")
        sources["garment"][f"demo-{name}"] = buffer.getvalue()
    return {kind: {name: _ingested(data) for name, data in found.items()} for kind, found in sources.items()}
