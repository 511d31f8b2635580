"""Peak memory of a training run, for the compare report's "peak training memory" column.

On CUDA: ``torch.cuda.max_memory_allocated`` (tensors only), reset when training starts. On Linux CPUs: the
process's peak resident set (``VmHWM``), reset through ``/proc/self/clear_refs`` when training starts, so a
sweep's earlier runs in the same process do not carry over; it includes Python and the data, so compare runs
made the same way. Elsewhere: None (not logged).
"""

from __future__ import annotations

import re

import torch

_STATUS, _CLEAR = "/proc/self/status", "/proc/self/clear_refs"


def reset_peak(device: torch.device) -> None:
    """Start measuring the peak from now."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open(_CLEAR, "w") as f:
            f.write("5")  # Linux: reset VmHWM to the current resident size
    except OSError:
        pass  # not Linux, or not permitted: peak_bytes then reports None


def peak_bytes(device: torch.device) -> int | None:
    """Peak bytes since :func:`reset_peak` (see the module docstring for what is counted), or None."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        status = open(_STATUS).read()
    except OSError:
        return None
    found = re.search(r"VmHWM:\s+(\d+)\s+kB", status)
    return int(found.group(1)) * 1024 if found else None
