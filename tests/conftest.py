"""Shared fixtures: the real sample photos and the offline switches for Ultralytics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ultralytics reads these once at import; no test may reach the network.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = PROJECT_ROOT.parent / "shared" / "samples" / "vitonhd"
# VITON-HD test photos the dataset's own preprocessing handled and our pose stage once refused (SOURCE.md there).
REJECTED_DIR = PROJECT_ROOT.parent / "shared" / "groundtruth" / "vitonhd-rejected"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """`../shared/samples/vitonhd` (image/ and cloth/), or a skip saying it is missing."""
    if not (SAMPLES_DIR / "image").is_dir() or not (SAMPLES_DIR / "cloth").is_dir():
        pytest.skip(f"sample photos not found at {SAMPLES_DIR} (they live in ../shared, outside the repo)")
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def rejected_dir() -> Path:
    """`../shared/groundtruth/vitonhd-rejected` (00482_00, 03052_00, 00802_00.jpg), or a skip saying it is missing."""
    if not all((REJECTED_DIR / f"{stem}.jpg").is_file() for stem in ("00482_00", "03052_00", "00802_00")):
        pytest.skip(f"the once-rejected VITON-HD photos are not at {REJECTED_DIR} (they live in ../shared)")
    return REJECTED_DIR


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API server (SQLite in a temp folder) for flow tests; one per session."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


from tests.s3 import s3, s3_server  # noqa: E402,F401
from tests.tryon_dataset import tryon_dataset  # noqa: E402,F401  (a preprocessed train split, per session)
from tests.yolo_weights import no_network, yolo_weights  # noqa: E402,F401  (shared session fixtures)
