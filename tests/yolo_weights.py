"""A real Ultralytics YOLOv8n-seg, trained offline on a tiny generated dataset, for the parse tests."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from tasks.stages.parse import YOLO_CLASS_NAMES

TINY_IMGSZ = 96


def _write_tiny_segmentation_dataset(root: Path, count: int = 8) -> Path:
    """Coloured shapes with YOLO polygon labels for 3 of the 8 classes (hair, upper_body, lower_body)."""
    rng = np.random.default_rng(0)
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)

    def row(class_id: int, points: np.ndarray) -> str:
        return f"{class_id} " + " ".join(f"{v / TINY_IMGSZ:.5f}" for v in points.reshape(-1))

    for index in range(count):
        image = np.full((TINY_IMGSZ, TINY_IMGSZ, 3), 200, dtype=np.uint8)
        x0, y0 = int(rng.integers(10, 30)), int(rng.integers(30, 40))
        x1, y1 = x0 + int(rng.integers(30, 50)), y0 + 25
        top = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        bottom = np.array([[x0 + 5, y1], [x1 - 5, y1], [x1 - 5, TINY_IMGSZ - 4], [x0 + 5, TINY_IMGSZ - 4]])
        head = cv2.ellipse2Poly(((x0 + x1) // 2, 15), (12, 10), 0, 0, 360, 30)
        rows = []
        shapes = ((3, top, (200, 40, 40)), (4, bottom, (40, 180, 40)), (0, head, (30, 30, 220)))  # BGR colours
        for class_id, polygon, colour in shapes:
            cv2.fillPoly(image, [polygon.astype(np.int32)], colour)
            rows.append(row(class_id, polygon))
        cv2.imwrite(str(root / "images" / "train" / f"{index}.jpg"), image)
        (root / "labels" / "train" / f"{index}.txt").write_text("\n".join(rows) + "\n")
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(YOLO_CLASS_NAMES))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n{names}")
    return data


@contextmanager
def network_refused():
    """Any DNS lookup or socket connect fails at once and is recorded, so a download attempt is visible."""
    attempts: list[str] = []

    def refuse(what):
        def _refuse(*args, **kwargs):
            attempts.append(f"{what}{args[1:2] if what == 'connect' else args[:2]}")
            raise OSError(f"network disabled in tests ({what})")

        return _refuse

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        patch.setattr(socket, "create_connection", refuse("create_connection"))
        patch.setattr(socket.socket, "connect", refuse("connect"))
        yield attempts


@pytest.fixture(scope="module")
def no_network():
    """No network for a whole test module (not for flow tests: they talk to a local Prefect server)."""
    with network_refused() as attempts:
        yield attempts


@pytest.fixture(scope="session")
def yolo_weights(tmp_path_factory) -> Path:
    """A YOLOv8n-seg built from the architecture YAML that ships in the package and trained 1 epoch on
    CPU on a tiny synthetic dataset. Offline: amp=False (the AMP check would fetch yolo nano weights),
    plots=False (fonts), and Ultralytics' dataset check, which HEADs Arial.ttf on its asset server even
    with YOLO_OFFLINE set, is stubbed."""
    import ultralytics.data.utils
    from ultralytics import YOLO

    root = tmp_path_factory.mktemp("yolo")
    data = _write_tiny_segmentation_dataset(root / "dataset")
    with network_refused() as attempts, pytest.MonkeyPatch.context() as patch:
        patch.setattr(ultralytics.data.utils, "check_font", lambda *args, **kwargs: None)
        model = YOLO("yolov8n-seg.yaml")
        model.train(
            data=str(data), epochs=1, imgsz=TINY_IMGSZ, batch=4, device="cpu", workers=0, amp=False,
            plots=False, val=False, project=str(root / "runs"), name="parser", exist_ok=True, verbose=False,
        )  # fmt: skip
    weights = root / "runs" / "parser" / "weights" / "last.pt"
    assert weights.is_file(), f"training wrote no {weights}"
    assert attempts == [], f"training tried the network: {attempts}"
    return weights


