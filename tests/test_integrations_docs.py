"""Every example of docs/integrations.md runs as written (each block in a fresh namespace)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
NEEDS = {"transformers": "transformers", "lightning": "lightning", "accelerate": "accelerate"}


def test_the_document_has_every_example():
    headings = re.findall(r"^## (.+)$", DOC.read_text(), flags=re.M)
    assert len(BLOCKS) == 5
    assert headings[:5] == ["A plain loop", "The wrapper: GradScaler, clipping, accumulation, LR schedulers",
                            "Hugging Face Trainer", "Lightning", "accelerate"]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, tmp_path, monkeypatch):
    block = BLOCKS[index]
    assert "assert " in block  # every example checks what it claims
    for module, package in NEEDS.items():
        if f"import {module}" in block:
            pytest.importorskip(package)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block, f"{DOC}:example {index + 1}", "exec"), {"__name__": f"example_{index}"})  # noqa: S102
