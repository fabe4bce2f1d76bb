"""What a benchmark ran on (standard library only, so every bench can import it on a bare GPU machine)."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def log(message: str) -> None:
    """A timestamped progress line on stderr (stdout is for the tables)."""
    import sys
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def device_info(device: str, **extra: str) -> dict:
    """The device, PyTorch, its threads and the CPU, plus the GPU's name and CUDA version on CUDA."""
    import os

    import torch

    info = {"device": device, "torch": torch.__version__, **extra, "threads": torch.get_num_threads(),
            "cpu": cpu_model(), "cpus": os.cpu_count()}  # fmt: skip
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def synchronizer(device: str):
    """A function that waits for queued GPU work (a no-op on the CPU), for honest timings."""
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def release(device: str) -> None:
    """Free what the last measurement left: Python garbage and, on CUDA, the allocator's cache."""
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
