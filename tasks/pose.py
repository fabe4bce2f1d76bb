"""Pose: MediaPipe BlazePose landmarks mapped to OpenPose BODY_25, its JSON and its rendered skeleton."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PoseResult:
    """What the pose stage knows about one 768x1024 person image.

    keypoints_body25: (25, 3) float32, x and y in pixels of the image, confidence 0..1; a missing
        joint is 0, 0, 0 (OpenPose convention, contract §1.5).
    landmarks_px: (33, 4) float32, MediaPipe's landmarks as x_px, y_px, z (MediaPipe's relative
        depth), visibility. Kept for the geometric parser.
    segmentation: (H, W) float32 person probability 0..1 from the pose model, or None.
    persons_detected: how many people the image holds (the pose is of the chosen one).
    """

    keypoints_body25: np.ndarray
    landmarks_px: np.ndarray
    segmentation: np.ndarray | None
    persons_detected: int
