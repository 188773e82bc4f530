"""Every documented example runs: module doctests and the README's Python blocks."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
DOCTEST_MODULES = ["edit", "edit.graph", "edit.pipeline", "edit.passes.base", "edit.passes.policy",
                   "edit.passes.apply_policy", "edit.search"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_module_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(readme_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_blocks()[index], f"README.md[python block {index}]", "exec"), {"__name__": "readme"})
