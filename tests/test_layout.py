"""The code's shape: modules small enough to read, and the layering contracts import-linter checks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_core_module_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n for p in ROOT.glob("core/**/*.py") if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long, long


def test_no_function_is_over_80_lines_and_the_formatter_formats() -> None:
    sources = [p for folder in ("core", "ui", "pages") for p in (ROOT / folder).rglob("*.py")]
    long = [
        f"{p.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1})"
        for p in sources
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, long
    skips = sum(p.read_text().count("# fmt: skip") for p in sources)
    assert skips <= 20, f"{skips} '# fmt: skip' markers: let the formatter format (a few aligned tables at most)"


def test_layering_contracts_hold() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout
