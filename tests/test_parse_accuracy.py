"""The geometric parser against the VITON-HD dataset's own parse maps (CIHP_PGN), on the development set
in ../shared/groundtruth/vitonhd: the floor it must keep, as bench/accuracy.py measures it.

The figures are the 13 groups of contract §1.4 (what the networks read), pooled over the persons.
Parser v3 measured 0.886 mean IoU over the 7 headline groups here, its lowest group 0.81 (v2: 0.795
and 0.67); the floors sit a little below, so that a change that makes the parse worse fails while noise
in MediaPipe does not.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tasks.stages.normalize import decode_image, fit_to_canvas
from tasks.stages.parse_geometric import GeometricParser
from tasks.stages.pose import PoseEstimator, as_stored
from tests.conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from accuracy import GROUP_NAMES, HEADLINE_GROUPS, Overlap, group_map, read_parse, their_parse_path  # noqa: E402

GROUNDTRUTH = PROJECT_ROOT.parent / "shared" / "groundtruth" / "vitonhd"
MIN_MEAN_IOU = 0.86  # over the 7 headline groups (background, hair, face, upper, bottom, arms)
MIN_GROUP_IOU = 0.76  # for each of them


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stem, ours, theirs) for every development person with a parse map."""
    if not (GROUNDTRUTH / "image").is_dir():
        pytest.skip(f"the development set is not at {GROUNDTRUTH} (it lives in ../shared, outside the repo)")
    found = []
    with PoseEstimator() as estimator, GeometricParser() as parser:
        for path in sorted((GROUNDTRUTH / "image").glob("*.jpg")):
            theirs_path = their_parse_path(GROUNDTRUTH, path.stem)
            if theirs_path is None:
                continue
            canvas, _ = fit_to_canvas(np.asarray(decode_image(path.read_bytes())))
            pose = as_stored(estimator.estimate(canvas))
            found.append((path.stem, parser.parse(canvas, pose), read_parse(theirs_path)))
    return found


@pytest.fixture(scope="module")
def pooled(parsed) -> Overlap:
    overlap = Overlap(13)
    for _, ours, theirs in parsed:
        overlap.add(group_map(ours), group_map(theirs))
    return overlap


def test_the_parse_agrees_with_the_datasets_over_the_headline_groups(pooled):
    mean = pooled.mean_iou(HEADLINE_GROUPS)
    assert mean >= MIN_MEAN_IOU, f"mean IoU over the 7 groups fell to {mean:.3f} (floor {MIN_MEAN_IOU})"


def test_no_headline_group_falls_behind(pooled):
    iou = pooled.iou()
    low = {GROUP_NAMES[g]: round(float(iou[g]), 3) for g in HEADLINE_GROUPS if iou[g] < MIN_GROUP_IOU}
    assert not low, f"groups below {MIN_GROUP_IOU} IoU: {low}"


def test_the_face_has_no_holes(parsed):
    import cv2

    for stem, ours, _ in parsed:
        face = (ours == 13).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(1 - face, connectivity=4)
        height, width = face.shape
        enclosed = [i for i in range(1, count) if not (stats[i, 0] == 0 or stats[i, 1] == 0
                    or stats[i, 0] + stats[i, 2] == width or stats[i, 1] + stats[i, 3] == height)]
        assert not enclosed, f"{stem}: the face encloses {len(enclosed)} holes"
