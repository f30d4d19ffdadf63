"""What every benchmark records about its machine, and interleaved timing.

Imported by the scripts of this folder (``python benchmarks/<script>.py`` puts the folder on the path).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine_info() -> dict:
    """Platform, cores, torch threads and version, accelerator, and the load average now."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "loadavg_before": os.getloadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each contender over ``repeats`` rounds after one warm-up call each.

    Every round runs each contender once, starting one further along the list each round, so a
    slow spell of a shared machine falls on all of them alike rather than on whichever ran last.
    """
    names = list(contenders)
    for name in names:
        contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            _sync()
            start = time.perf_counter()
            contenders[name]()
            _sync()
            times[name].append(time.perf_counter() - start)
    return times


def summary(seconds: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(seconds), 4), "min_s": round(min(seconds), 4),
            "runs": [round(s, 4) for s in seconds]}
