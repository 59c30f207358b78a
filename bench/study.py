"""A whole series from upload to series verdict, next to ``predict`` over the same files in the same run.

Generates a synthetic 176-section 256 x 256 DICOM series (12-bit, tumour in sections 70-99; no real scan) and
times, warm, in one process (the median of ``--repeat`` runs; every run listed):
- **study**: the files' bytes -> :func:`core.services.study_reading.analyse_study` (read and order the series, every
  section through crop, model in batches, gate, series rule);
- **study and save**: what the Study page's spinner waits for, :func:`core.services.studies.triage_study` into a
  new SQLite store and image folder (the analysis, the series' image kept as PNG, the record, its sections and
  the audit event);
- **predict**: the same files one at a time through :func:`core.model.analysis.analyse`, as ``python -m core
  predict`` runs them (the peer);
- **reading** the files, and the same volume as one NIfTI file (its peer).
Peak memory is the resident-set high-water mark of a fresh process that loads the model and analyses the study
once, next to one that only loads the model. Usage::

    .venv/bin/python bench/study.py [--sections 176] [--size 256] [--repeat 3] [--model CARD]

Prints a table and one JSON object (milliseconds, MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.config import model_card_path
from core.evaluation.metrics import machine
from core.imaging.phantom_series import dicom_series, head_volume, nifti


def head(sections: int, size: int):
    return head_volume(sections, size, range(sections * 2 // 5, sections * 4 // 7))


def series_files(sections: int, size: int) -> list[bytes]:
    return dicom_series(head(sections, size), spacing=1.0)


def read_ms(args: argparse.Namespace, files: list[bytes]) -> dict[str, float]:
    """Reading the series' files (ordered, stretched, turned to the radiological view) next to reading the same
    volume as one NIfTI file: the medians of ``--repeat`` runs (a NIfTI read copied the whole volume for each
    section: two minutes for 512 x 512 x 180)."""
    from core.imaging.series import read_study

    volume = nifti(head(args.sections, args.size), np.diag([0.9, 0.9, 1.0, 1.0]))
    timings: dict[str, list[float]] = {"dicom_read_ms": [], "nifti_read_ms": []}
    for _ in range(args.repeat):
        for name, given in (("dicom_read_ms", files), ("nifti_read_ms", [volume])):
            started = time.perf_counter()
            read_study(given)
            timings[name].append((time.perf_counter() - started) * 1000)
    return {name: round(median(values), 1) for name, values in timings.items()}


def peak_mb(args: argparse.Namespace, study: bool) -> float:
    """The high-water resident set (MB) of a fresh process that loads the model (and analyses the study once).

    Read from the child's own ``VmHWM``: ``getrusage``'s ``ru_maxrss`` survives fork and exec, so a child started by
    this process (which has loaded the model and run the study) would report this process's size, not its own."""
    code = (
        "import resource, sys; sys.path.insert(0, '.');"
        "from bench.study import series_files; from core.services.resources import load_classifier;"
        "from core.services.studies import analyse_study;"
        f"files = series_files({args.sections}, {args.size}) if {study} else None;"
        f"classifier = load_classifier({str(args.model)!r});"
        "outcome = analyse_study(files, classifier) if files else None;"
        "assert outcome is None or outcome.verdict is not None;"
        "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0])"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=int, default=176)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", type=Path, default=model_card_path())
    args = parser.parse_args()
    args.model = args.model.resolve()  # the memory child runs from the repository root

    from core.model.analysis import analyse
    from core.services.access import Actor
    from core.services.resources import load_classifier
    from core.services.studies import triage_study
    from core.services.study_reading import analyse_study
    from core.storage.images import FolderImages
    from core.storage.sqlite import SQLiteStore

    files = series_files(args.sections, args.size)
    classifier = load_classifier(args.model)  # as the Study page loads it: with the lesion segmenter when installed
    analyse_study(files[:8], classifier)  # warm-up: the first batch traces the model
    study_ms, saved_ms, predict_ms, outcome = [], [], [], None
    reader = Actor("bench", "radiologist")
    for _ in range(args.repeat):
        started = time.perf_counter()
        outcome = analyse_study(files, classifier)
        study_ms.append((time.perf_counter() - started) * 1000)
        with tempfile.TemporaryDirectory() as folder:  # a new store each time: never "already saved"
            store, images = SQLiteStore(Path(folder) / "results.sqlite3"), FolderImages(Path(folder) / "images")
            started = time.perf_counter()
            done = triage_study(files, classifier, store, actor=reader, patient_ref=None, images=images, key=b"k" * 32)
            saved_ms.append((time.perf_counter() - started) * 1000)
            assert [v.status.state for v in done.views if v.status] == ["saved"], done
        started = time.perf_counter()
        for data in files:
            analyse(data, classifier)
        predict_ms.append((time.perf_counter() - started) * 1000)
    assert outcome is not None and outcome.series
    series = outcome.series[0]
    result = {
        "machine": machine(),
        "model": f"{classifier.card.name} {classifier.card.version}",
        "segmenter": classifier.segmenter is not None,
        "series": f"{args.sections} sections, {args.size} x {args.size}, 12-bit DICOM, {len(files)} files",
        "study_ms": round(median(study_ms), 1),
        "study_ms_all": [round(v) for v in study_ms],
        "study_and_save_ms": round(median(saved_ms), 1),
        "study_and_save_ms_all": [round(v) for v in saved_ms],
        "predict_ms": round(median(predict_ms), 1),
        "ratio_study_to_predict": round(median(study_ms) / median(predict_ms), 3),
        "stages_ms": {k: round(v, 1) for k, v in series.timings_ms.items()} | {"read": round(outcome.read_ms, 1)},
        **read_ms(args, files),
        "verdict": series.label,
        "analysed": len(series.analysed),
        "peak_rss_mb_model_only": round(peak_mb(args, study=False), 1),
        "peak_rss_mb_model_and_study": round(peak_mb(args, study=True), 1),
        "this_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(
        f"study {result['study_ms']:.0f} ms (target <= 3000), with saving {result['study_and_save_ms']:.0f} ms, "
        f"predict over the same files {result['predict_ms']:.0f} ms, ratio {result['ratio_study_to_predict']}; "
        f"peak RSS {result['peak_rss_mb_model_and_study']:.0f} MB "
        f"(model alone {result['peak_rss_mb_model_only']:.0f} MB); reading the files {result['dicom_read_ms']:.0f} ms, "
        f"the same volume as NIfTI {result['nifti_read_ms']:.0f} ms"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
