"""A Scan page holding a batch: the server's time for each rerun (any click, a reference typed) once the batch is
on screen, through Streamlit's AppTest (no browser: the server's part only).

    .venv/bin/python bench/scan_reruns.py [DIR] [--files 40] [--reruns 6] [--model CARD]

DIR is any folder of PNG/JPEG scans (searched recursively, every n-th file); without it, FILES synthetic 512 x 512
slices. A fresh data folder each run. Prints one JSON object: the batch's first run and each rerun in milliseconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.evaluation.metrics import machine

ROOT = Path(__file__).resolve().parents[1]


def batch(folder: str | None, count: int) -> list[tuple[str, bytes, str]]:
    """(name, bytes, type) of ``count`` scans as the uploader gives them."""
    if folder is None:
        from PIL import Image

        from core.imaging.phantoms import synthetic_slice

        out = []
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(synthetic_slice(512, tumour=i % 2 == 0, seed=i)).save(buffer, "PNG")
            out.append((f"slice-{i}.png", buffer.getvalue(), "image/png"))
        return out
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    step = max(1, len(files) // count)
    return [(p.name, p.read_bytes(), "image/png") for p in files[::step][:count]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--reruns", type=int, default=6)
    parser.add_argument("--model", help="model card JSON (default: the shipped model or $BTD_MODEL)")
    args = parser.parse_args()
    if args.model:
        os.environ["BTD_MODEL"] = str(Path(args.model).resolve())
    from streamlit.testing.v1 import AppTest

    from core.services.access import Actor

    with tempfile.TemporaryDirectory() as data:
        os.environ["BTD_DATA_DIR"] = data
        app = AppTest.from_file(str(ROOT / "pages" / "scan.py"), default_timeout=600)
        app.session_state["actor"] = Actor("bench", "radiologist")
        app.run()
        files = batch(args.folder, args.files)
        started = time.perf_counter()
        app.file_uploader[0].set_value(files).run()
        first = (time.perf_counter() - started) * 1000
        if app.exception:
            raise SystemExit(f"the page failed: {app.exception}")
        reruns = []
        for _ in range(args.reruns):
            started = time.perf_counter()
            app.run()
            reruns.append(round((time.perf_counter() - started) * 1000, 1))
    print(
        json.dumps(
            {
                "machine": machine(),
                "files": len(files),
                "batch_ms": round(first, 1),
                "rerun_ms": reruns,
                "rerun_median_ms": statistics.median(reruns),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
