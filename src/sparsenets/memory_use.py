"""The process's own peak memory, for ``sparsity.json`` and the benchmarks."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB.

    Read from ``VmHWM`` in ``/proc/self/status`` where there is one: ``getrusage``'s ``ru_maxrss``
    carries a parent's peak across ``fork`` + ``exec`` (Linux keeps the larger of the two), so a
    small job started by a large process would report the parent's peak. Elsewhere ``ru_maxrss``
    (KiB on Linux, bytes on macOS).
    """
    status = Path("/proc/self/status")
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if peak > 1 << 32 else peak / 1024
