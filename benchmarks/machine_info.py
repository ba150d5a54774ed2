"""What the benchmarks record about the machine they ran on."""

from __future__ import annotations

import os
import platform

from sparsenets.cpu import cpu_flags as _all_flags
from sparsenets.cpu import cpuinfo_field

# The CPU features the kernels and the ratios against dense BLAS depend on.
VECTOR_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve",
)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of :data:`VECTOR_FLAGS` the CPU reports."""
    flags = _all_flags()
    return [flag for flag in VECTOR_FLAGS if flag in flags]


def cpu_kind() -> str:
    """A short name of the CPU kind results are stated per: vendor and widest vector unit,
    e.g. ``"AMD, AVX-512"`` or ``"Intel, AVX-512 + AMX"``."""
    vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(
        cpuinfo_field("vendor_id") or "", platform.machine()
    )
    flags = set(cpu_flags())
    if "avx512f" in flags:
        unit = "AVX-512" + (" + AMX" if "amx_bf16" in flags else "")
    elif "avx2" in flags:
        unit = "AVX2"
    else:
        unit = ", ".join(sorted(flags)) or "no vector flags read"
    return f"{vendor}, {unit}"


def machine() -> dict:
    """CPU model, kind, vector flags, logical CPUs and L2 size, for a benchmark's JSON."""
    from sparsenets.sparse import kernels

    return {
        "cpu": cpu_model(),
        "cpu_kind": cpu_kind(),
        "flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "l2_bytes": kernels.l2_bytes(),
        "machine": platform.machine(),
    }
