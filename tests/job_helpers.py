"""Light helpers for tests whose jobs run in spawned worker processes.

Worker processes import the module that defines a pickled job or segmenter; a test module
imports torch (seconds per worker on a busy machine), this one only hpa_kit.segment.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def small_segmenter():
    """The classical segmenter for 256 px synthetic images (1/8 of 2048 px: pixel_size 8)."""
    from hpa_kit.segment import ClassicalSegmenter  # here: job-only workers skip scipy

    return ClassicalSegmenter(scale=0.5, pixel_size=8.0)


class KillerSegmenter:
    """Kills its worker process on images 200 px high; else the small classical segmenter."""

    def __init__(self) -> None:
        self.inner = small_segmenter()
        self.scale, self.config = self.inner.scale, self.inner.config

    def segment(self, images):
        if images[0].shape[0] == 200:
            os._exit(1)
        return self.inner.segment(images)


class GatedSegmenter:
    """The small classical segmenter that waits while ``gate`` exists, on images whose first
    red pixel is odd: a run can be caught (and killed) mid-way, then resumed without the gate
    to the same result."""

    def __init__(self, gate: str) -> None:
        self.gate = gate
        self.inner = small_segmenter()
        self.scale, self.config = self.inner.scale, self.inner.config

    def segment(self, images):
        while images[0][0, 0, 0] % 2 and Path(self.gate).exists():
            time.sleep(0.05)
        return self.inner.segment(images)


def worker_pid(image_id: str, value: object) -> int:
    """A job stage: the pid of the process that runs it."""
    return os.getpid()


def thread_limits(image_id: str, value: object) -> tuple[int, str | None, int]:
    """A job stage: (pid, OMP_NUM_THREADS, OpenCV's threads) of the process that runs it."""
    import cv2

    return os.getpid(), os.environ.get("OMP_NUM_THREADS"), cv2.getNumThreads()


def exit_on(image_id: str, value: object) -> str:
    """A job stage that kills its worker process for id ``"die"``."""
    if image_id == "die":
        os._exit(3)
    return image_id
