"""Per-item errors: a machine-readable code and a human-readable reason.

A stage raises `ItemError` for anything wrong with one input; the shard task records it in the
manifest and goes on. Anything else is an infrastructure error and fails (and retries) the task.
"""

from __future__ import annotations


class ItemError(Exception):
    """One input cannot produce its outputs. `code` is stable; `message` says why, for people."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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
# Garments
NO_GARMENT = "no_garment"
# Try-on and training: a dataset file a pair needs is absent or does not follow the contract
MISSING_INPUT = "missing_input"
BAD_INPUT = "bad_input"
# A stage whose inputs an earlier stage did not produce
UPSTREAM_FAILED = "upstream_failed"
# A bug or an unexpected library error on one item, kept from failing the shard
STAGE_ERROR = "stage_error"
