"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import sparsenets as sn

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    sparsifier = namespace["sparsifier"]
    assert isinstance(sparsifier, sn.DynamicSparsity)
    assert sparsifier.masks.nnz() == round(0.1 * sparsifier.masks.numel())
