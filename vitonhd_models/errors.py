"""Per-item errors: a machine-readable code and a human-readable reason.

A stage raises `ItemError` for anything wrong with one input; the shard task records it in the
manifest and goes on. Anything else is an infrastructure error and fails (and retries) the task.
"""

from __future__ import annotations


class ItemError(Exception):
    """One input cannot produce its outputs. `code` is stable; `message` says why, for people.

    `fields` are manifest fields the stage learned before it failed (a pose's confidences, say).
    """

    def __init__(self, code: str, message: str, fields: dict | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fields = dict(fields or {})

    def __reduce__(self):  # crosses from worker processes to the shard task
        return (ItemError, (self.code, self.message, self.fields))


# Reading the source
SOURCE_MISSING = "source_missing"  # gone between listing and reading, or a symlink to nothing
SOURCE_PERMISSION_DENIED = "source_permission_denied"
SOURCE_NOT_A_FILE = "source_not_a_file"  # a FIFO, a device, a socket named like a photo
SOURCE_TOO_LARGE = "source_too_large"  # more than max_source_bytes
SOURCE_UNREADABLE = "source_unreadable"  # any other read error of one object (a symlink loop, say)
UNSAFE_KEY = "unsafe_key"  # a key that would resolve outside its root ("..", "//", a leading "/")
OUTSIDE_ROOT = "outside_root"  # a symlink that points outside the catalog root
STEM_COLLISION = "stem_collision"  # another key of the same kind has the same output names


# Decoding and normalisation
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated_image"
UNSUPPORTED_MODE = "unsupported_mode"
TOO_SMALL = "image_too_small"
DECOMPRESSION_BOMB = "decompression_bomb"
# Pose
NO_PERSON = "no_person"
MISSING_KEYPOINTS = "missing_keypoints"
ZERO_HIP_WIDTH = "zero_hip_width"
NOT_UPRIGHT = "not_upright"  # lying down or upside down
SEVERAL_PERSONS = "several_persons"  # another person of similar size in the photo
# Garments
NO_GARMENT = "no_garment"
# Try-on and training: a dataset file a pair needs is absent or does not follow the contract
MISSING_INPUT = "missing_input"
BAD_INPUT = "bad_input"
# A bug or an unexpected library error on one item, kept from failing the shard
STAGE_ERROR = "stage_error"
# The worker process died (a crash in native code, or killed for memory) on this item, twice
WORKER_CRASHED = "worker_crashed"
