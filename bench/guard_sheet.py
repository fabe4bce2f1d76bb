"""A contact sheet of the speed change's quality guard: today's parse maps and cloth masks beside the
outputs of the code before it (tests/fixtures/before_speedup.npz), for people to look at.

    .venv/bin/python bench/guard_sheet.py [--out guard-sheet.png]

Person rows: photo, parse before, parse now, where the labels differ (red). Garment rows: photo,
mask before, mask now, where they differ (red: only before, green: only now). Captions give the share of
pixels that agree (parse) and the IoU (mask).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.machine import log  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "before_speedup.npz"


def difference(photo: np.ndarray, before: np.ndarray, now: np.ndarray) -> np.ndarray:
    """The photo dimmed, red where only `before` holds, green where only `now` does (grown by two
    pixels, so that one-pixel differences survive the tile's quarter size)."""
    import cv2

    kernel = np.ones((5, 5), np.uint8)
    shown = photo // 3 + 100
    for where, colour in ((before & ~now, (255, 0, 0)), (~before & now, (0, 200, 0))):
        shown[cv2.dilate(where.astype(np.uint8), kernel) > 0] = colour
    return shown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("guard-sheet.png"))
    args = parser.parse_args()

    from tasks.stages.cloth_mask import cloth_mask_classical
    from tasks.stages.contact_sheet import contact_sheet, encode_png
    from tasks.stages.parse_geometric import GeometricParser
    from tasks.stages.pose import PoseEstimator, as_stored
    from tests.conftest import SAMPLES_DIR
    from tests.stage_photos import guard_photos
    from vitonhd_models.contract import colourise_parse

    photos = guard_photos(SAMPLES_DIR)
    with np.load(FIXTURES) as stored:
        before = {name: stored[name] for name in stored.files}
    rows = []
    with PoseEstimator() as estimator, GeometricParser() as geometric:
        for name, ingested in photos["person"].items():
            log(f"person {name}")
            valid_box = ingested.fit.content_box() if ingested.fit is not None else None
            labels = geometric.parse(ingested.image, as_stored(estimator.estimate(ingested.image, valid_box=valid_box)))
            old = before[f"parse/{name}"]
            changed = old != labels
            rows.append((f"{name}: {np.mean(~changed):.2%} of pixels keep their label",
                         [ingested.image, colourise_parse(old), colourise_parse(labels),
                          difference(ingested.image, changed, np.zeros_like(changed))]))
    for name, ingested in photos["garment"].items():
        log(f"garment {name}")
        old, now = before[f"mask/{name}"] > 0, cloth_mask_classical(ingested.image) > 0
        iou = np.count_nonzero(old & now) / max(1, np.count_nonzero(old | now))
        rows.append((f"{name}: mask IoU {iou:.4f}",
                     [ingested.image, old.astype(np.uint8) * 255, now.astype(np.uint8) * 255,
                      difference(ingested.image, old, now)]))
    args.out.write_bytes(encode_png(contact_sheet(rows)))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
