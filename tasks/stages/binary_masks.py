"""Binary masks, as the stages clean them: holes filled, the largest component kept.

A mask is any array whose non-zero pixels are "on" (0/255 uint8 or bool); the results are 0/255 uint8.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _on(mask: np.ndarray) -> np.ndarray:
    return (np.asarray(mask) > 0).astype(np.uint8) * 255


def fill_holes(mask: np.ndarray, keep_open: np.ndarray | None = None, max_area: float = math.inf) -> np.ndarray:
    """Set every background region not connected to the image border to 255, but the regions holding a
    pixel of `keep_open` and those larger than `max_area` pixels."""
    mask = _on(mask)
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    # Flood the background from the padded corner: it reaches every region that touches the border.
    cv2.floodFill(padded, None, (0, 0), 128)
    filled = cv2.compare(padded[1:-1, 1:-1], 128, cv2.CMP_NE)
    if keep_open is None and math.isinf(max_area):
        return filled
    # The holes (4-connected, as the flood) to keep open go back to 0.
    count, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.bitwise_and(filled, cv2.bitwise_not(mask)),
                                                               connectivity=4)
    reopen = stats[:, cv2.CC_STAT_AREA] > max_area
    if keep_open is not None:
        reopen[labels[(np.asarray(keep_open) > 0) & (mask == 0)]] = True
    reopen[0] = False
    filled[reopen[labels]] = 0
    return filled


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected foreground component (all zeros stays all zeros)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(_on(mask), connectivity=8)
    if count <= 1:
        return np.zeros(np.shape(mask), dtype=np.uint8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return cv2.compare(labels, largest, cv2.CMP_EQ)
