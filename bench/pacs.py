"""PACS benchmark: a 176-section MR series in a local Orthanc (DICOMweb), then the app's path from the PACS to the
verdict (retrieve into memory, read, analyse with the shipped model; no search) and the send of its report and key
images, timed; the peer in the same run is the same series analysed from files on disk (``study``'s path).

    .venv/bin/python bench/pacs.py [--sections 176] [--repeats 3]

Needs Debian's orthanc and orthanc-dicomweb. Prints a table and one JSON object (seconds).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.evaluation.metrics import machine
from core.imaging.phantom_series import dicom_series, head_volume
from core.pacs.client import Pacs
from core.pacs.objects import ModelFacts
from core.pacs.orthanc import DevOrthanc, available
from core.services import pacs as service
from core.services.access import COMMAND_LINE
from core.services.resources import load_classifier
from core.services.study_reading import analyse_path
from core.storage.sqlite import SQLiteStore

STUDY = "1.2.826.0.1.3680043.8.498.176"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=int, default=176)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if available():
        sys.exit(available())
    import pydicom

    classifier = load_classifier()
    files = dicom_series(head_volume(args.sections, 256, range(70, 100)), study_uid=STUDY, series_uid=f"{STUDY}.1")
    report: dict = {"machine": machine(), "sections": args.sections, "segmenter": classifier.segmenter is not None}
    with DevOrthanc() as orthanc, tempfile.TemporaryDirectory() as folder:
        pacs = Pacs(orthanc.dicomweb, orthanc.user, orthanc.password)
        pacs.store([pydicom.dcmread(io.BytesIO(f)) for f in files])
        for k, data in enumerate(files):
            (Path(folder) / f"{k:04d}.dcm").write_bytes(data)
        card = classifier.card
        model = ModelFacts(card.name, card.version, card.weights_sha256)
        pulls, sends, disk = [], [], []
        trail = SQLiteStore(Path(folder) / "results.sqlite3")  # every pull and send is audited, as in use
        for _ in range(args.repeats):
            started = time.perf_counter()
            pulled = service.pull_and_analyse(pacs, COMMAND_LINE, STUDY, classifier, trail, None)
            pulls.append(time.perf_counter() - started)
            assert pulled.outcome.error_code is None, pulled.outcome.error_message
            started = time.perf_counter()
            stored = service.send_results(pacs, COMMAND_LINE, pulled, model, trail, None)
            sends.append(time.perf_counter() - started)
            started = time.perf_counter()
            analyse_path(Path(folder), classifier)
            disk.append(time.perf_counter() - started)
        report |= {
            "pacs_to_verdict_s": round(statistics.median(pulls), 2),
            "send_s": round(statistics.median(sends), 2),
            "objects_sent": len(stored),
            "files_on_disk_to_verdict_s": round(statistics.median(disk), 2),
        }
    print(f"{'PACS to verdict (pull + read + analyse)':<44} {report['pacs_to_verdict_s']:>6} s")
    print(f"{'send (SR + ' + str(len(stored) - 1) + ' key images)':<44} {report['send_s']:>6} s")
    print(f"{'peer: the same files from disk to verdict':<44} {report['files_on_disk_to_verdict_s']:>6} s")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
