"""What the CPU reports about itself (``/proc/cpuinfo``), for choices that depend on it."""

from __future__ import annotations

from pathlib import Path


def cpuinfo_field(*names: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line whose key is one of ``names`` (e.g.
    ``"model name"``, ``"flags"`` / ``"Features"``), or ``None`` where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in names:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 ``flags`` or ARM ``Features``; empty where unreadable)."""
    return set((cpuinfo_field("flags", "Features") or "").split())
