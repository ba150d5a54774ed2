"""The interpreter of the ``sparselab`` system: a venv under ``.bench/sparselab``, created on
first use, that sees this project's packages (torch, numpy, sparsenets) and holds sparselab 0.2.2
installed with ``--no-deps`` (so it cannot pull another torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from . import ROOT

BENCH_VENV = ROOT / ".bench" / "sparselab"
SPARSELAB = "sparselab==0.2.2"


def sparselab_python(allow_install: bool) -> tuple[str | None, str]:
    """The interpreter of the sparselab venv (created on first use), or None and a note."""
    py = BENCH_VENV / "bin" / "python"
    check = [
        str(py),
        "-c",
        "import sparselab, torch; print(sparselab.__version__, torch.__version__)",
    ]
    if py.exists():
        run = subprocess.run(check, capture_output=True, text=True)
        if run.returncode == 0:
            return str(py), f"sparselab {run.stdout.strip()}"
    if not allow_install:
        return None, "sparselab not installed (--no-install)"
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(BENCH_VENV)], check=True, capture_output=True
        )
        # The bench venv sees this project's packages (torch 2.13.0 CPU, numpy, sparsenets)
        # through a .pth file; sparselab itself goes in with --no-deps, so nothing here can pull
        # another torch.
        site = subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        main_site = subprocess.run(
            [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        Path(site, "zz_main_venv.pth").write_text(f"import site; site.addsitedir({main_site!r})\n")
        subprocess.run(
            [str(py), "-m", "pip", "install", "--quiet", "--no-deps", SPARSELAB],
            check=True,
            capture_output=True,
            text=True,
        )
        run = subprocess.run(check, capture_output=True, text=True, check=True)
        return str(py), f"sparselab {run.stdout.strip()}"
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return (
            None,
            f"sparselab unavailable: {detail.strip().splitlines()[-1] if detail.strip() else exc}",
        )
