"""The parts of ``benchmarks/sparse_speed.py`` (masked vs sparse vs sparselab MLPs, issue 10).

One job per module:

* :mod:`.systems`: the models, the shared masks and initial values, each system
  (``masked``, ``sparse``, ``sparse-torch``, ``auto``, ``auto-torch``, ``sparselab``) built
  from them, and the training step every system is timed on;
* :mod:`.sparselab_venv`: the ``.bench/sparselab`` venv that runs the ``sparselab`` system;
* :mod:`.measure`: how a process measures: median timings, training memory (RSS high-water
  mark reset through ``/proc/self/clear_refs``), the bare sparse kernels, test accuracy;
* :mod:`.worker`: one (model, sparsity, system) in a fresh process: what it measures in which
  order, and the parent's side of the subprocess protocol (spec in ``--worker``, JSON out);
* :mod:`.report`: the rounds combined into medians, the table (and its markdown), the plot;
* :mod:`.checks`: the issue's targets judged against the measurements of a run.

``benchmarks/sparse_speed.py`` is the command line and the orchestrator; it is also what every
worker process runs (``sparse_speed.py --worker SPEC --result FILE``, under this project's
python or the sparselab venv's). It puts ``benchmarks/`` on ``sys.path`` itself, so this package
imports under either interpreter; ``sparsenets`` comes from ``src/`` through ``PYTHONPATH``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
OUT = ROOT / "benchmarks" / "out"
SCRIPT = ROOT / "benchmarks" / "sparse_speed.py"  # what the worker processes run

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
