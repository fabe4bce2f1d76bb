"""The faster pose, parser and cloth-mask code keeps today's outputs (issue 13's quality guard).

`tests/fixtures/before_speedup.npz` holds what the code before the speed change produced on the sample
photos, their mirror images and the demo's photos (see tests/fixtures/make_before_speedup.py). The
parse maps and cloth masks are no longer compared with it: parser v3 and the classical mask v2 changed
them on purpose, and they are measured against the VITON-HD dataset's own maps and masks instead
(tests/test_parse_accuracy.py, tests/test_cloth_mask.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.stages.pose import PoseEstimator, as_stored
from tests.stage_photos import guard_photos

BEFORE = Path(__file__).parent / "fixtures" / "before_speedup.npz"
MAX_KEYPOINT_SHIFT_PX = 1.0


@pytest.fixture(scope="module")
def before() -> dict[str, np.ndarray]:
    with np.load(BEFORE) as stored:
        return {name: stored[name] for name in stored.files}


@pytest.fixture(scope="module")
def photos(samples_dir):
    return guard_photos(samples_dir)


@pytest.fixture(scope="module")
def now(photos) -> dict[str, object]:
    """The current code's poses."""
    found = {}
    with PoseEstimator() as estimator:
        for name, ingested in photos["person"].items():
            valid_box = ingested.fit.content_box() if ingested.fit is not None else None
            found[name] = (as_stored(estimator.estimate(ingested.image, valid_box=valid_box)), None)
    return found


def test_every_photo_of_the_fixtures_is_still_there(before, photos):
    names = {key.split("/", 1)[1] for key in before if key.startswith("parse/")}
    assert names == set(photos["person"]), "the guard photos changed: the fixtures no longer match them"


def test_the_people_counted_are_unchanged(before, now):
    changed = {name: (int(before[f"persons/{name}"]), pose.persons_detected)
               for name, (pose, _) in now.items() if pose.persons_detected != int(before[f"persons/{name}"])}
    assert not changed, f"persons_detected changed (before, now): {changed}"


def test_keypoints_move_by_less_than_a_pixel(before, now):
    for name, (pose, _) in now.items():
        old, new = before[f"keypoints/{name}"], pose.keypoints_body25
        assert np.array_equal(old[:, 2] > 0, new[:, 2] > 0), f"{name}: other joints are missing now"
        shift = np.linalg.norm(old[:, :2] - new[:, :2], axis=1).max()
        assert shift < MAX_KEYPOINT_SHIFT_PX, f"{name}: a keypoint moved by {shift:.2f} px"
