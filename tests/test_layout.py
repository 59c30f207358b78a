"""The code's shape: modules small enough to read, and the layering contracts import-linter checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_core_module_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n for p in ROOT.glob("core/**/*.py") if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long, long


def test_layering_contracts_hold() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout
