"""`python -m core`: JSON lines, JSON errors for every rejected file, exit codes 0/1/2, never a traceback."""

from __future__ import annotations

import argparse
import io
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.cli.main import build_parser
from tests.scans import dicom_bytes, empty_database, jpeg_bytes, png_bytes, synthetic_slice
from tests.test_imaging import bomb_png

ROOT = Path(__file__).resolve().parents[1]
PREDICTION_KEYS = {
    "file",
    "label",
    "probabilities",
    "tumour_probability",
    "confidence",
    "roi",
    "model",
    "timings_ms",
    "gate",
    "image",
    "warnings",
}


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """Every kind of bad upload, built here, with the error code the CLI must give it."""
    jpeg = jpeg_bytes(synthetic_slice(256))
    png = bytearray(png_bytes(synthetic_slice(128)))
    png[png.find(b"IDAT") + 8] ^= 0xFF  # damage the compressed data: CRC no longer matches
    animated = io.BytesIO()
    frames = [Image.fromarray(synthetic_slice(96, seed=s)) for s in range(2)]
    frames[0].save(animated, "PNG", save_all=True, append_images=frames[1:])
    stored = (synthetic_slice(128).astype(np.uint16) * 16).astype(np.uint16)
    return {
        "empty.png": (b"", "empty_file"),
        "report.png": (b"%PDF-1.4\n" + b"x" * 300, "unsupported_format"),
        "archive.png": (b"PK\x03\x04" + b"\x00" * 300, "unsupported_format"),
        "page.png": (b"<html><body>hello</body></html>" + b" " * 300, "unsupported_format"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt_image"),
        "badcrc.png": (bytes(png), "corrupt_image"),
        "noiend.png": (png_bytes(synthetic_slice(128))[:-12], "corrupt_image"),
        "bomb.png": (bomb_png(), "image_too_large"),
        "tiny.png": (png_bytes(synthetic_slice(40)), "image_too_small"),
        "animated.png": (animated.getvalue(), "multi_frame"),
        "black.png": (png_bytes(np.zeros((128, 128), np.uint8)), "no_brain_found"),
        "white.png": (png_bytes(np.full((128, 128), 255, np.uint8)), "no_brain_found"),
        "nopreamble.dcm": (dicom_bytes(stored, preamble=False), "unsupported_format"),
        "nopixels.dcm": (dicom_bytes(stored, pixel_data=False), "no_pixel_data"),
        "truncated.dcm": (dicom_bytes(stored, truncate_pixels=4000), "corrupt_image"),
        "video.dcm": (dicom_bytes(stored, transfer_syntax="1.2.840.10008.1.2.4.100"), "unsupported_dicom"),
        "colour.dcm": (dicom_bytes(stored, photometric="RGB"), "unsupported_dicom"),
        "volume.dcm": (dicom_bytes(np.stack([stored, stored]), frames=2), "multi_frame"),
        "ct.dcm": (dicom_bytes(stored, modality="CT"), "wrong_modality"),
    }


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict]]:
    code = main(args)
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.strip()]


def test_predict_prints_one_json_line_per_file(tmp_path: Path, tiny_card: Path, capsys) -> None:
    files = []
    for i, data in enumerate([png_bytes(synthetic_slice(512, tumour=True)), jpeg_bytes(synthetic_slice(300))]):
        files.append(tmp_path / f"scan{i}")
        files[-1].write_bytes(data)
    code, lines = run_main(["predict", "--model", str(tiny_card), *map(str, files)], capsys)
    assert code == 0 and len(lines) == 2
    for line, path in zip(lines, files, strict=True):
        assert set(line) == PREDICTION_KEYS and line["file"] == str(path)
        assert line["label"] in line["probabilities"]
        assert line["tumour_probability"] == pytest.approx(1 - line["probabilities"]["notumor"], abs=1e-5)
        assert line["warnings"] == []
    secondary = tmp_path / "capture.dcm"  # a secondary capture: the Scan page warned, the command line did not
    secondary.write_bytes(dicom_bytes((synthetic_slice(256) * 16).astype(np.uint16), modality="OT"))
    code, (line,) = run_main(["predict", "--model", str(tiny_card), str(secondary)], capsys)
    assert "not MR: check that this is an MRI slice" in " ".join(line.get("warnings", [])), line
    assert [line["image"] for line in lines] == [{"width": 512, "height": 512}, {"width": 300, "height": 300}]
    large = tmp_path / "large.png"  # reduced to the working size: roi is in the reduced image, which "image" gives
    large.write_bytes(png_bytes(cv2.resize(synthetic_slice(256, tumour=True), (3000, 2400))))
    code, (line,) = run_main(["predict", "--model", str(tiny_card), str(large)], capsys)
    assert line["image"] == {"width": 2048, "height": 1638} and "reduced" in " ".join(line["warnings"])
    assert line["roi"][2] <= 2048 and line["roi"][3] <= 1638


def test_every_bad_input_gets_its_specific_json_error(tmp_path: Path, tiny_card: Path, capsys) -> None:
    cases = bad_inputs()
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(synthetic_slice(256)))
    with open(tmp_path / "huge.png", "wb") as huge:  # past the 50 MB upload limit (sparse: nothing is written)
        huge.seek(51 * 2**20)
        huge.write(b"\0")
    cases["huge.png"] = (b"", "file_too_large")
    (tmp_path / "a-folder").mkdir()  # it said "No such file"
    paths = [str(tmp_path / name) for name in cases] + [str(good), str(tmp_path / "missing.png")]
    code, lines = run_main(["predict", "--model", str(tiny_card), *paths, str(tmp_path / "a-folder")], capsys)
    assert code == 1
    by_file = {Path(line["file"]).name: line for line in lines}
    for name, (_, expected_code) in cases.items():
        assert by_file[name]["error"]["code"] == expected_code, name
        assert by_file[name]["error"]["message"]
    assert by_file["missing.png"]["error"]["code"] == "not_found"
    assert by_file["a-folder"]["error"]["code"] == "is_a_folder" and "study" in by_file["a-folder"]["error"]["message"]
    # a frame to choose is an option here (the message named the page's picker only)
    assert "--frame N (0 to 1)" in by_file["volume.dcm"]["error"]["message"]
    assert "--frame" not in by_file["animated.png"]["error"]["message"]
    assert "label" in by_file["good.png"]  # a bad file never stops the batch


def arguments_of_every_command(parser: argparse.ArgumentParser, path: str = "") -> dict[str, list[str]]:
    """Each (sub-)command's path and its arguments in order: an option's strings, or a positional's name."""
    found = {path: []}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                found |= arguments_of_every_command(command, f"{path} {name}".strip())
        elif not isinstance(action, argparse._HelpAction):
            found[path].append("/".join(action.option_strings) or action.dest)
    return found


def test_every_command_keeps_its_options() -> None:
    """The parser is built in one function per group of commands: none was dropped, renamed or reordered."""
    assert arguments_of_every_command(build_parser()) == {
        "": [],
        "predict": ["--model", "--frame", "--save", "--lesion-masks", "files"],
        "study": ["--model", "paths", "--save", "--display-out"],
        "evaluate": ["--model", "--split", "--source", "--without-neighbours", "dir"],
        "fit-gate": ["--model", "--data"],
        "fit-decision": ["--model", "--data"],
        "calibrate": ["--model", "--data", "--batchnorm"],
        "fit-series": ["--model", "--data"],
        "loio": ["--model", "folds"],
        "ensemble": ["--member", "--out", "--data"],
        "train": [
            *("--data", "--out", "--epochs", "--size", "--name", "--seed", "--version", "--unknown-weight"),
            *("--mirror/--no-mirror", "--synthetic-lesions", "--rotation", "--learning-rate", "--max-minutes"),
            *("--init", "--samples-per-epoch", "--transplants", "--min-tumour-pixels", "--hold-out"),
        ],
        "cache": ["--data", "--from", "--out", "--size", "--workers", "--jpeg"],
        "train-standard": [
            *("--cache", "--split", "--out", "--data", "--width", "--draws", "--batch-size", "--round-steps"),
            *("--learning-rate", "--seed", "--name", "--version", "--max-minutes", "--twin-threshold"),
            *("--validate-every", "--anneal"),
            *("--branch", "--hold-out", "--fast"),
        ],
        "train-lesion": [
            *("--cache", "--data", "--out", "--folds", "--fold", "--draws", "--width", "--batch", "--backbone"),
            *("--fold-backbones", "--tune"),
        ],
        "store": [],
        "store forget": [],
        "store accept-key": [],
        "store backup": ["out"],
        "users": [],
        "users add": ["name", "--role", "--password-stdin", "--sso", "--temporary"],
        "users list": [],
        "users disable": ["name"],
        "users enable": ["name"],
        "users unlock": ["name"],
        "users set-role": ["name", "role"],
        "users set-password": ["name", "--password-stdin", "--temporary"],
        "audit": [],
        "audit verify": ["--expect-head"],
        "audit export": ["--action", "--actor"],
        "images": [],
        "images purge": ["--days"],
        "pacs": [],
        "pacs analyse": ["--url", "--study", "--user", "--password-stdin", "--insecure", "--model", "--save", "--send"],
        "pacs serve-dev": [],
        "pacs watch": [
            *("--url", "--rest", "--user", "--password-stdin", "--insecure", "--model", "--send", "--once"),
            *("--from-now", "--interval"),
        ],
    }


def test_bad_usage_exits_2_with_json(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict"])
    assert exit_info.value.code == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "bad_usage"


@pytest.mark.parametrize(
    "args",
    [
        ["users", "set-password", "admin1", "--password", "Hunter2-S3CRET-pw"],
        ["users", "set-password", "admin1", "--password=Hunter2-S3CRET-pw"],
        ["pacs", "watch", "--once", "--url", "http://127.0.0.1:9/dicom-web", "--password", "Hunter2-S3CRET-pw"],
        ["users", "add", "dr-c", "--role", "radiologist", "--pass", "Hunter2-S3CRET-pw"],
        ["pacs", "analyse", "--study", "1.2.3", "--user", "u", "--password", "-Hunter2-S3CRET-pw"],
        ["pacs", "analyse", "--study", "1.2.3", "--user", "u", "--password", "--S3CRET=pw"],
        ["users", "set-password", "admin1", "--password-stdin=Hunter2-S3CRET"],  # "ignored explicit argument"
        ["users", "add", "dr-c", "--role", "S3CRET", "--password-stdin"],  # "invalid choice"
        ["users", "set-password", "admin1", "--password-stdin=Hunter2's-S3CRET"],  # quoted "..." by argparse
        ["users", "add", "dr-c", "--role", "Hunter2's-S3CRET", "--password-stdin"],
    ],
)
def test_a_secret_typed_after_a_mistyped_option_is_never_quoted_back(args: list[str], capsys) -> None:
    """argparse took ``--password`` for an abbreviation of ``--password-stdin``, and the secret, left over, was
    quoted back as an unrecognised argument on standard output, which a scheduler keeps in its log."""
    with pytest.raises(SystemExit) as usage:
        main(args)
    out = capsys.readouterr()
    (line,) = [json.loads(text) for text in out.out.splitlines()]
    assert usage.value.code == 2 and line["error"]["code"] == "bad_usage"
    assert "S3CRET" not in out.out + out.err


@pytest.mark.parametrize(
    "args",
    [
        ["pacs", "watch", "--url", "http://127.0.0.1:9/dicom-web", "--interval", value]
        for value in ("-1", "0", "nan", "inf", "soon")
    ]
    + [
        ["pacs", "analyse", "--url", "http://127.0.0.1:9/dicom-web", "--study", uid]
        for uid in ("abc", "1.2.", "1" * 65)
    ],
)
def test_bad_pacs_options_are_usage_errors_before_anything_runs(args: list[str], capsys) -> None:
    """A negative interval failed after a whole pass had analysed and sent, 0 polled in a tight loop, inf
    overflowed; a malformed study UID went to the PACS and its refusal was blamed on the PACS."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "bad_usage"


def test_pacs_analyse_sends_nothing_unless_it_saves(tmp_path: Path, capsys, monkeypatch) -> None:
    """Without --save, no series was "not saved", so --send sent a report to the PACS for a result on no worklist
    (the page and the watch refuse it)."""
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    args = ["pacs", "analyse", "--url", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3", "--send"]
    assert main(args) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "bad_usage" and "--save" in error["message"]
    assert not (tmp_path / "data").exists()  # refused before the model, the database or the PACS


def test_unusable_model_exits_2_with_json(tmp_path: Path, capsys) -> None:
    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(synthetic_slice(128)))
    code, lines = run_main(["predict", "--model", str(tmp_path / "nope.json"), str(scan)], capsys)
    assert code == 2 and lines[0]["error"]["code"] == "model_error"


def test_train_refuses_a_missing_starting_model_and_an_empty_folder_with_json(tmp_path: Path, capsys) -> None:
    (tmp_path / "data" / "notumor").mkdir(parents=True)
    data = str(tmp_path / "data")
    code, lines = run_main(["train", "--data", data, "--init", str(tmp_path / "nope.json")], capsys)
    assert code == 2 and lines[0]["error"]["code"] == "not_found" and "nope.json" in lines[0]["error"]["message"]
    code, lines = run_main(["train", "--data", data, "--out", str(tmp_path / "out")], capsys)
    assert code != 0 and "no PNG, JPEG or DICOM files" in lines[0]["error"]["message"]
    assert not (tmp_path / "out").exists()


def test_every_train_option_reaches_the_training_settings(tmp_path: Path, capsys, monkeypatch) -> None:
    import core.training.run

    seen = {}

    def fake_train(data_dirs, out_dir, config, command):
        seen["config"] = config
        return {"name": config.name, "version": config.version, "metrics": {}}

    monkeypatch.setattr(core.training.run, "train", fake_train)
    (tmp_path / "data" / "notumor").mkdir(parents=True)
    options = ["--epochs", "7", "--size", "96", "--name", "m", "--seed", "3", "--version", "9.9.9"]
    options += ["--unknown-weight", "4", "--no-mirror", "--synthetic-lesions", "0.2", "--rotation", "25"]
    options += ["--learning-rate", "5e-4", "--max-minutes", "240"]
    code, lines = run_main(["train", "--data", str(tmp_path / "data"), *options], capsys)
    assert code == 0 and lines[0]["version"] == "9.9.9"
    config = seen["config"]
    assert (config.epochs, config.size, config.name, config.seed, config.version) == (7, 96, "m", 3, "9.9.9")
    assert (config.unknown_weight, config.mirror, config.synthetic_lesions, config.rotation) == (4.0, False, 0.2, 25.0)
    assert (config.learning_rate, config.max_minutes) == (5e-4, 240.0)


def test_evaluate_scores_a_labelled_folder(tmp_path: Path, tiny_card: Path, capsys) -> None:
    for label in ("glioma", "meningioma", "notumor", "pituitary", "tumour"):
        (tmp_path / label).mkdir()
        for i in range(2):
            data = png_bytes(synthetic_slice(160, tumour=label != "notumor", seed=i))
            (tmp_path / label / f"{i}.png").write_bytes(data)
    (tmp_path / "notumor" / "broken.png").write_bytes(b"%PDF-1.4 nope" * 30)
    (tmp_path / "glioma" / "broken.png").write_bytes(b"%PDF-1.4 nope" * 30)  # a refused tumour: missed, not absent
    (tmp_path / "glioma" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" * 40)  # hidden files and folders: not scans
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "0.png").write_bytes(b"\0" * 100)
    code, lines = run_main(["evaluate", "--model", str(tiny_card), str(tmp_path)], capsys)
    report = lines[0]
    assert code == 0
    assert report["n"] == 10 and report["n_labelled"] == 8 and report["rejected"] == {"unsupported_format": 2}
    assert report["rejected_by_label"] == {"notumor": 1, "glioma": 1} and report["unknown_type_tumour_n"] == 2
    served = report["with_refused_tumours_missed"]
    assert served["tumour_positives"] == 9
    assert served["tumour_sensitivity"] == pytest.approx(report["tumour_sensitivity"] * 8 / 9)
    assert 0 <= report["accuracy"] <= 1
    assert report["confusion_matrix"]["labels"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert sum(map(sum, report["confusion_matrix"]["rows_true_columns_predicted"])) == 8
    assert set(report["per_class"]["glioma"]) == {"precision", "recall", "support"}
    assert report["tumour_positives"] == 8 and report["tumour_negatives"] == 2
    assert {"tumour_sensitivity", "tumour_specificity", "expected_calibration_error"} <= set(report)
    assert report["latency_ms"]["p50"] > 0 and report["latency_ms"]["p95"] >= report["latency_ms"]["p50"]


@pytest.mark.heavy
def test_cli_process_never_prints_a_traceback(tmp_path: Path, tiny_card: Path) -> None:
    for name, (data, _) in list(bad_inputs().items())[:6]:
        (tmp_path / name).write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "core", "predict", "--model", str(tiny_card), *map(str, sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert all("error" in json.loads(line) for line in done.stdout.splitlines())


def test_predict_can_back_fill_the_database_once(tmp_path: Path, tiny_card: Path, capsys, monkeypatch) -> None:
    from core.storage.sqlite import SQLiteStore

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    empty_database(tmp_path / "data")  # as the app's first start leaves it
    monkeypatch.delenv("MONGODB_URI", raising=False)
    scan = tmp_path / "ZZCANARY_scan.png"
    scan.write_bytes(png_bytes(synthetic_slice(256, tumour=True)))
    code, lines = run_main(["predict", "--save", "--model", str(tiny_card), str(scan)], capsys)
    assert code == 0 and lines[0]["saved"] == "saved"
    code, lines = run_main(["predict", "--save", "--model", str(tiny_card), str(scan)], capsys)
    assert lines[0]["saved"] == "already saved"
    store = SQLiteStore(tmp_path / "data" / "results.sqlite3")
    assert store.summary().total == 1 and store.recent(1)[0].uploader == "cli"


def test_a_second_pacs_watch_of_one_data_folder_is_refused(
    tmp_path: Path, tiny_card: Path, capsys, monkeypatch
) -> None:
    """Two watches of one data folder pulled, analysed and sent every study twice, and overwrote each other's state."""
    import os

    from core.services.pacs_watch import WatchState

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    empty_database(tmp_path / "data")
    running = WatchState.exclusive(tmp_path / "data" / "pacs-watch.lock")  # the first watch
    args = ["pacs", "watch", "--once", "--url", "http://127.0.0.1:9/dicom-web", "--model", str(tiny_card)]
    code, (line,) = run_main(args, capsys)
    assert code == 2 and line["error"]["code"] == "watch_running"
    os.close(running)
    code, lines = run_main(args, capsys)  # the first gone: this one watches (the PACS is not there)
    assert code == 1 and lines[0]["error"]["code"] != "watch_running"


def test_a_configuration_fault_is_bad_configuration_from_every_command_and_names_its_file(
    tmp_path: Path, tiny_card: Path, capsys, monkeypatch
) -> None:
    """The same fault got 'bad_input' from one command and 'bad_configuration' from another, a damaged key file
    read 'ValueError: non-hexadecimal number found in fromhex() arg at position 0' (naming no file), and a data
    folder that is a file 'cannot be read or created (File exists)'."""
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.delenv("BTD_AUDIT_KEY", raising=False)
    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(synthetic_slice(256)))
    monkeypatch.setenv("BTD_DATA_DIR", str(empty_database(tmp_path / "data")))
    (tmp_path / "data" / "audit.key").write_text("zz-not-hex")
    for args in (["users", "list"], ["predict", "--save", "--model", str(tiny_card), str(scan)], ["images", "purge"]):
        code, (line,) = run_main(args, capsys)
        assert code == 2 and line["error"]["code"] == "bad_configuration", args
        assert (
            "audit.key does not hold a valid key" in line["error"]["message"]
            and "fromhex" not in line["error"]["message"]
        )
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "a-file"))
    code, (line,) = run_main(["users", "list"], capsys)
    assert code == 2 and line["error"]["code"] in ("bad_configuration", "store_error")
    secrets = tmp_path / "secrets.toml"
    secrets.write_text("[mongo\nuri = 'x'\n")
    monkeypatch.setenv("BTD_SECRETS", str(secrets))
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    for args in (["users", "list"], ["predict", "--save", "--model", str(tiny_card), str(scan)]):
        code, (line,) = run_main(args, capsys)
        assert code == 2 and line["error"]["code"] == "bad_configuration" and "secrets file" in line["error"]["message"]
    monkeypatch.setenv("BTD_SECRETS", str(tmp_path / "secret.toml"))  # mistyped: a new database and keys, rc 0
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "unmade"))
    for args in (["users", "list"], ["predict", "--save", "--model", str(tiny_card), str(scan)]):
        code, (line,) = run_main(args, capsys)
        assert (code, line["error"]["code"]) == (2, "bad_configuration") and "not exist" in line["error"]["message"]
    assert not (tmp_path / "unmade").exists()


def test_predict_save_exits_3_when_a_result_could_not_be_saved(
    tmp_path: Path, tiny_card: Path, capsys, monkeypatch
) -> None:
    import core.services.triage
    from core.errors import StoreUnavailable

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    empty_database(tmp_path / "data")  # as the app's first start leaves it
    monkeypatch.delenv("MONGODB_URI", raising=False)
    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(synthetic_slice(256, tumour=True)))
    from core.storage.sqlite import SQLiteStore

    def down(self, *args, **kwargs):
        raise StoreUnavailable("the disk is full")

    monkeypatch.setattr(SQLiteStore, "add", down)
    code, lines = run_main(["predict", "--save", "--model", str(tiny_card), str(scan)], capsys)
    assert code == 3 and lines[0]["saved"].startswith("not saved")
    assert core.services.triage.NOT_SAVED == "not saved"


def test_predict_save_goes_on_past_an_image_store_that_is_not_a_folder(
    tmp_path: Path, tiny_card: Path, capsys, monkeypatch
) -> None:
    """With "images" a file, removing the draft raised its own NotADirectoryError: one "bad_input" line, exit 2,
    and no file after the first was read."""
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    empty_database(tmp_path / "data")  # as the app's first start leaves it
    monkeypatch.delenv("MONGODB_URI", raising=False)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "images").write_bytes(b"not a folder")
    scans = [tmp_path / f"scan-{k}.png" for k in range(2)]
    for k, scan in enumerate(scans):
        scan.write_bytes(png_bytes(synthetic_slice(256, tumour=True, seed=k)))
    code, lines = run_main(["predict", "--save", "--model", str(tiny_card), *map(str, scans)], capsys)
    assert code == 3 and len(lines) == 2 and all(line["saved"].startswith("not saved") for line in lines)
    assert all("image could not be kept" in line["saved"] for line in lines)


def test_a_file_name_that_is_not_valid_text_is_one_json_line_not_the_end_of_the_batch() -> None:
    import io
    import os

    from core.cli.common import emit

    class Strict(io.StringIO):
        def write(self, text: str) -> int:
            text.encode("utf-8")  # what a strict UTF-8 stdout does
            return super().write(text)

    stream = Strict()
    emit({"file": os.fsdecode(b"/tmp/M\xfcller.png"), "label": "glioma"}, stream)
    emit({"file": "ok.png"}, stream)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2 and lines[0]["label"] == "glioma" and lines[0]["file"].startswith("/tmp/M")
    # a C-locale stdout (errors="surrogateescape") wrote the raw bytes back: not UTF-8, not JSON to a reader
    raw = io.BytesIO()
    lenient = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape")
    emit({"file": os.fsdecode(b"bad\xff\xfename.png")}, lenient)
    assert json.loads(raw.getvalue().decode("utf-8"))["file"].startswith("bad")
    ascii_only = io.TextIOWrapper(io.BytesIO(), encoding="ascii")  # PYTHONIOENCODING=ascii: escaped, not a stop
    emit({"file": "café.png"}, ascii_only)
    ascii_only.flush()
    assert json.loads(ascii_only.buffer.getvalue())["file"] == "café.png"


def test_output_files_never_overwrite_a_file_nor_follow_a_link_planted_in_the_folder(tmp_path: Path) -> None:
    """Masks and display images were written with write_bytes: a second run replaced the first's, and a link
    planted in a shared output folder was followed to wherever it pointed."""
    from core.cli.common import write_new

    victim = tmp_path / "elsewhere.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan.png.lesion.png").symlink_to(victim)
    first = write_new(out, "scan.png", ".lesion.png", b"mask one")
    second = write_new(out, "scan.png", ".lesion.png", b"mask two")
    assert (first.name, second.name) == ("scan.png-2.lesion.png", "scan.png-3.lesion.png")
    assert victim.read_text() == "keep me" and first.read_bytes() == b"mask one" and second.read_bytes() == b"mask two"


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--epochs", "-1"],
        ["train", "--size", "0"],
        ["train", "--max-minutes", "-5"],
        ["cache", "--workers", "0"],
        ["train-standard", "--draws", "0"],
        ["train-standard", "--batch-size", "0"],
        ["train-standard", "--learning-rate", "nan"],
        ["train-lesion", "--width", "0"],
        ["train", "--samples-per-epoch", "-5"],
        ["train", "--rotation", "nan"],
        ["train", "--seed", "-1"],
        ["train", "--transplants", "1.5"],
    ],
)
def test_training_options_out_of_range_are_usage_errors_before_anything_runs(args: list[str], capsys) -> None:
    """They failed deep inside a run (a zero batch, a negative epoch count) or trained nothing."""
    with pytest.raises(SystemExit) as usage:
        main(args)
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert usage.value.code == 2 and line["error"]["code"] == "bad_usage" and args[1] in line["error"]["message"]


def test_bad_values_a_corrupt_file_and_a_url_with_credentials_each_get_one_json_line(tmp_path, capsys) -> None:
    """Each was a traceback (an overflowing --days, --validate-every 0 after a whole round, a corrupt cache), or
    printed the PACS password written into the address."""
    for args in (["images", "purge", "--days", "1000000"], ["train-standard", "--out", "r", "--validate-every", "0"]):
        with pytest.raises(SystemExit) as usage:  # refused while parsing, before anything runs
            main(args)
        (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
        assert usage.value.code == 2 and line["error"]["code"] == "bad_usage" and "36500" in line["error"]["message"]
    for command in ("calibrate", "fit-gate", "fit-series", "fit-decision"):  # answered about a split file before
        with pytest.raises(SystemExit) as usage:
            main([command, "--data", str(tmp_path / "nowhere")])
        (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
        assert usage.value.code == 2 and f"not a folder: {tmp_path / 'nowhere'}" in line["error"]["message"]
    corrupt = tmp_path / "cache.npz"
    corrupt.write_bytes(b"PK\x03\x04" + b"junk" * 50)
    code, lines = run_main(["cache", "--from", str(corrupt), "--out", str(tmp_path / "out.npz")], capsys)
    assert code == 2 and len(lines) == 1 and "error" in lines[0] and "junk" not in json.dumps(lines)
    picture = tmp_path / "brain.png"  # numpy's advice was to load it "unsafely" (pickles allowed); empty: EOFError
    picture.write_bytes(png_bytes(synthetic_slice(64)))
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    for given in (picture, tmp_path / "empty.npz", tmp_path / "other.npz"):
        code, lines = run_main(["cache", "--from", str(given), "--out", str(tmp_path / "out.npz")], capsys)
        said = lines[0]["error"]["message"]
        assert code == 2 and f"{given.name} is not a crop cache written by `python -m core cache`" in said
        assert "pickle" not in said and "unsafe" not in said
    code, lines = run_main(["pacs", "watch", "--url", "admin:s3cret@pacs.example:8042/dicom-web", "--once"], capsys)
    assert code == 2 and lines[0]["error"]["code"] == "pacs_error" and "s3cret" not in json.dumps(lines)


def test_a_password_from_standard_input_loses_a_windows_line_ending(tmp_path, monkeypatch, capsys) -> None:
    """'a long passphrase\\r' was stored: the first admin made from a Windows-edited file could not sign in."""
    import io

    from core.services import accounts
    from core.storage import open_store

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long passphrase\r\n"))
    code, said = run_main(["users", "add", "boss", "--role", "admin", "--password-stdin"], capsys)
    # made a database where none was: said (a mistyped BTD_DATA_DIR answered as if it were the server's)
    assert code == 0 and said[0]["notes"] == [
        f"a new, empty results database was made in {tmp_path / 'data'} (BTD_DATA_DIR)"
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("another long passphrase\n"))
    code, said = run_main(["users", "add", "dr-b", "--role", "radiologist", "--password-stdin"], capsys)
    assert code == 0 and "notes" not in said[0]  # the second: the database was there
    from core.config import audit_key

    store = open_store(None, tmp_path / "data", audit_key({}, shared_database=False))  # as the command's
    assert accounts.sign_in(store, "boss", "a long passphrase").role == "admin"


def test_a_reader_that_stops_reading_ends_the_command_quietly(
    tmp_path: Path, tiny_card: Path, monkeypatch, capsys
) -> None:
    """`predict a b c | head -1`: the error line about the closed pipe was written to the same closed pipe, and
    that second failure escaped as a traceback."""
    import io
    import sys

    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(synthetic_slice(256)))
    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["predict", "--model", str(tiny_card), str(scan), str(scan)]) == 141
    monkeypatch.undo()  # a broken pipe elsewhere (a worker's) while stdout is fine: an internal error, said so
    import core.cli.scans as scans

    def worker_died(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(scans, "load_classifier", worker_died)
    code, lines = run_main(["predict", str(scan)], capsys)
    assert code == 2 and lines[0]["error"]["code"] == "internal_error"


def test_standard_output_closed_full_or_gone_before_a_usage_error_ends_the_command_quietly(
    tmp_path: Path, tiny_card: Path, monkeypatch
) -> None:
    """A usage error written to a closed pipe (`predict 2>e | true`) escaped main's handler, which began after the
    arguments were parsed; `>/dev/full` failed again inside the handler that reported the first failure; `>&-`
    (no standard output at all) was an AttributeError: three tracebacks, exit 1."""
    import io
    import sys

    class Failing(io.StringIO):
        def __init__(self, error: OSError) -> None:
            super().__init__()
            self.error = error

        def write(self, text: str) -> int:
            raise self.error

        def flush(self) -> None:
            raise self.error

    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(synthetic_slice(256)))
    monkeypatch.setattr(sys, "stdout", Failing(BrokenPipeError(32, "Broken pipe")))
    assert main(["predict"]) == 141  # the usage error's own line
    monkeypatch.setattr(sys, "stdout", Failing(OSError(28, "No space left on device")))
    monkeypatch.setattr(sys, "stderr", said := io.StringIO())
    assert main(["predict", "--model", str(tiny_card), str(scan)]) == 2
    assert "output could not be written (No space left on device)" in said.getvalue()  # it was exit 2 in silence
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["predict", "--model", str(tiny_card), str(scan)]) == 2


def test_a_real_pipe_closed_after_the_first_line_ends_the_command_quietly(tmp_path: Path, tiny_card: Path) -> None:
    """`predict a b c | head -1` on a real pipe: the failed flush dropped its buffer, so a second flush (the check
    for a closed reader) succeeded, and the command wrote two tracebacks and exited 1."""
    import subprocess
    import sys

    scans = []
    for n in range(4):
        scans.append(tmp_path / f"scan{n}.png")
        scans[-1].write_bytes(png_bytes(synthetic_slice(256, seed=n)))
    command = [sys.executable, "-m", "core", "predict", "--model", str(tiny_card), *map(str, scans * 50)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1])
    assert json.loads(process.stdout.readline())["file"].endswith("scan0.png")
    process.stdout.close()  # as `head -1` does
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141 and "Traceback" not in stderr, stderr


def test_evaluate_refuses_a_folder_that_is_not_a_label_and_goes_on_past_a_failing_file(
    tmp_path: Path, tiny_card: Path, capsys, monkeypatch
) -> None:
    """A `no_tumor` folder (a common spelling) was scored as tumour positives; one file that failed in an
    unexpected way ended a run of minutes."""
    import core.evaluation.evaluate as evaluate

    for label in ("glioma", "no_tumor"):
        (tmp_path / label).mkdir()
        for i in range(2):
            (tmp_path / label / f"{i}.png").write_bytes(png_bytes(synthetic_slice(160, seed=i)))
    code, lines = run_main(["evaluate", "--model", str(tiny_card), str(tmp_path)], capsys)
    assert code == 2 and lines[0]["error"]["code"] == "bad_input" and "no_tumor" in lines[0]["error"]["message"]
    (tmp_path / "no_tumor").rename(tmp_path / "notumor")
    real = evaluate.analyse

    def fails_once(data, classifier):
        if not fails_once.done:
            fails_once.done = True
            raise RuntimeError("a bug")
        return real(data, classifier)

    fails_once.done = False
    monkeypatch.setattr(evaluate, "analyse", fails_once)
    code, lines = run_main(["evaluate", "--model", str(tiny_card), str(tmp_path)], capsys)
    assert code == 0 and lines[0]["rejected"] == {"internal_error": 1} and lines[0]["n_labelled"] == 3


def test_evaluate_refuses_an_empty_folder_and_a_split_that_does_not_fit_it(tmp_path: Path, tiny_card: Path, capsys):
    """An empty folder printed "n": 0 and exit 0; a split's missing file was scored as an unreadable scan, a ".."
    entry scored a file outside the data, and a bare [] gave an internal error."""
    import json

    data = tmp_path / "data"
    (data / "glioma").mkdir(parents=True)
    code, lines = run_main(["evaluate", "--model", str(tiny_card), str(data)], capsys)
    assert code == 2 and "Nothing to score" in lines[0]["error"]["message"]
    (data / "glioma" / "0.png").write_bytes(png_bytes(synthetic_slice(160, seed=1)))
    (tmp_path / "outside.png").write_bytes(png_bytes(synthetic_slice(160, seed=2)))
    split = tmp_path / "split.json"
    for entries, said in (
        ([["glioma/0.png", "glioma"], ["glioma/nope.png", "glioma"]], "1 of split.json's 2 files are not in"),
        ([["glioma/0.png", "glioma"], ["../outside.png", "glioma"]], "lie outside"),
        ([["glioma/0.png", "glioma"], [str(tmp_path / "outside.png"), "glioma"]], "lie outside"),
        ([], "Nothing to score"),
    ):
        split.write_text(json.dumps({"validation": entries}))
        code, lines = run_main(["evaluate", "--model", str(tiny_card), "--split", str(split), str(data)], capsys)
        assert code == 2 and lines[0]["error"]["code"] == "bad_input" and said in lines[0]["error"]["message"]
    for text in ("[]", '{"train": []}', "not json", "[" * 100_000 + "]" * 100_000):
        split.write_text(text)
        code, lines = run_main(["evaluate", "--model", str(tiny_card), "--split", str(split), str(data)], capsys)
        assert code == 2 and "is not a split file" in lines[0]["error"]["message"]
    linked = tmp_path / "linked"  # a class folder linked to another disk is the data's own, not "outside"
    linked.mkdir()
    (linked / "glioma").symlink_to(data / "glioma")
    split.write_text(json.dumps({"validation": [["glioma/0.png", "glioma"]]}))
    code, lines = run_main(["evaluate", "--model", str(tiny_card), "--split", str(split), str(linked)], capsys)
    assert code == 0 and lines[0]["files"] == 1


def test_a_retention_setting_out_of_range_exits_2_like_the_option(tmp_path, capsys, monkeypatch) -> None:
    """``BTD_IMAGE_RETENTION_DAYS=abc`` exited 1 (as if files were rejected) where ``--days 0`` exits 2."""
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BTD_IMAGE_RETENTION_DAYS", "abc")
    code, lines = run_main(["images", "purge"], capsys)
    assert code == 2 and lines[0]["error"]["code"] == "invalid_days" and "BTD_IMAGE_RETENTION_DAYS" in json.dumps(lines)
    monkeypatch.setenv("BTD_IMAGE_RETENTION_DAYS", "30")  # a purge says what it kept of unreviewed results too
    from core.services.resources import open_results_store

    open_results_store()  # the app's first run made the database
    code, lines = run_main(["images", "purge"], capsys)
    assert code == 0 and lines == [{"deleted": 0, "kept_unread": 0, "older_than_days": 30}]


def test_a_pacs_password_without_a_user_name_is_a_usage_error(tmp_path: Path, capsys, monkeypatch) -> None:
    """It was dropped without a word, and the PACS's refusal blamed the password."""
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    for env in ("BTD_PACS_USER", "BTD_PACS_URL", "BTD_PACS_PASSWORD"):
        monkeypatch.delenv(env, raising=False)
    for command in (["pacs", "analyse", "--study", "1.2.3"], ["pacs", "watch", "--once"]):
        monkeypatch.setattr(sys, "stdin", io.StringIO("secret\n"))
        code, lines = run_main([*command, "--url", "http://127.0.0.1:9/dicom-web", "--password-stdin"], capsys)
        assert code == 2 and lines[0]["error"]["code"] == "bad_usage" and "--user" in lines[0]["error"]["message"]


def test_a_command_that_saves_makes_no_new_database_in_a_mistyped_data_folder(
    tmp_path: Path, tiny_card: Path, capsys, monkeypatch
) -> None:
    """``predict --save`` into a mistyped BTD_DATA_DIR said "saved" into a new database nobody reads, and ``pacs
    watch`` there took the folder for a first start: every study the PACS ever held analysed again (and, sending,
    reported again)."""
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "dataa"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(synthetic_slice(256)))
    for command in (
        ["predict", "--model", str(tiny_card), "--save", str(scan)],
        ["study", "--model", str(tiny_card), "--save", str(tmp_path)],
        ["pacs", "watch", "--url", "http://127.0.0.1:1/dicom-web", "--once"],
    ):
        code, lines = run_main(command, capsys)
        assert code == 2 and "There is no results database" in lines[-1]["error"]["message"], command
    assert not (tmp_path / "dataa").exists()
    # a database cut to an empty file (a full disk, a failed copy) beside its key: made anew over, "saved"
    (tmp_path / "dataa").mkdir()
    (tmp_path / "dataa" / "results.sqlite3").write_bytes(b"")
    code, lines = run_main(["predict", "--model", str(tiny_card), "--save", str(scan)], capsys)
    assert code == 2 and "is an empty file" in lines[-1]["error"]["message"]
    assert (tmp_path / "dataa" / "results.sqlite3").stat().st_size == 0


def test_a_patient_key_that_is_not_the_databases_is_refused_before_any_study_is_filed_under_it(
    tmp_path: Path, tiny_card: Path, capsys, monkeypatch
) -> None:
    """A data folder restored with another installation's (or another backup's) patient-ref.key was used without a
    word: a study's second series went under another study reference, the patient's History split in two."""
    from core.imaging.phantom_series import dicom_series, head_volume
    from core.services.resources import open_results_store

    monkeypatch.setenv("LOGNAME", "someone-else")  # the audit names the account by its user id, not by this

    data = tmp_path / "data"
    monkeypatch.setenv("BTD_DATA_DIR", str(data))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.delenv("BTD_HMAC_KEY", raising=False)
    open_results_store()  # the app's first run made the database
    series = tmp_path / "series"
    series.mkdir()
    for index, data_bytes in enumerate(dicom_series(head_volume(3, 64))):
        (series / f"{index}.dcm").write_bytes(data_bytes)
    code, lines = run_main(["study", "--model", str(tiny_card), "--save", str(series)], capsys)
    assert code == 0 and lines[0]["saved"] == "saved"
    first = open_results_store().key_check("patient_reference", "not this one")  # recorded at its first use
    (data / "patient-ref.key").write_bytes(bytes(range(32)).hex().encode())  # another installation's key
    code, lines = run_main(["study", "--model", str(tiny_card), "--save", str(series)], capsys)
    assert code == 2 and "patient-reference key is not the one" in lines[-1]["error"]["message"]
    assert "store accept-key" in lines[-1]["error"]["message"]
    # the administrator decides this key is the right one (the recorded one was lost before any reference)
    code, lines = run_main(["store", "accept-key"], capsys)
    assert code == 0 and len(lines[0]["accepted"]) == 32 and lines[0]["changed"] is True
    accepted = lines[0]["accepted"]
    code, lines = run_main(["store", "accept-key"], capsys)  # again: nothing to replace, no second event
    assert code == 0 and lines[0] == {"accepted": accepted, "changed": False}
    code, lines = run_main(["study", "--model", str(tiny_card), "--save", str(series)], capsys)
    assert code == 0 and lines[0]["saved"] == "already saved"  # no longer refused (the same images: one record)
    store = open_results_store()
    assert store.key_check("patient_reference", "another") == accepted
    assert [e.detail for e in store.audit_events() if e.action == "patient_key_accepted"] == [
        # what it replaced: a mistaken accept is traced and undone; and which operating-system account ran the
        # command (two administrators of one server were both "cli")
        {"fingerprint": accepted, "replaced": first, "os_user": pwd.getpwuid(os.geteuid()).pw_name}
    ]


def test_a_password_that_is_not_utf8_is_refused_by_name(tmp_path, monkeypatch, capsys) -> None:
    """Latin-1 bytes on standard input answered "UnicodeEncodeError: ... surrogates not allowed"."""
    import io

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    raw = io.TextIOWrapper(io.BytesIO(b"\xff\xfe a long password\n"), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", raw)
    code, lines = run_main(["users", "add", "bob", "--role", "radiologist", "--password-stdin"], capsys)
    assert code == 2 and "not UTF-8 text" in lines[0]["error"]["message"]
    assert "surrogates" not in lines[0]["error"]["message"]


@pytest.mark.parametrize(
    "command",
    [
        ["users", "disable", "a\udcffb"],
        ["users", "unlock", "a\udcffb"],
        ["users", "set-role", "a\udcffb", "radiologist"],
        ["audit", "export", "--actor", "a\udcffb"],
        ["audit", "export", "--action", "a\udcffb"],
        ["pacs", "watch", "--once", "--user", "a\udcffb"],  # sent to the PACS in a header
    ],
)
def test_a_name_or_filter_that_is_not_utf8_is_a_usage_error_saying_so(command, tmp_path, monkeypatch, capsys) -> None:
    """Bytes that are not UTF-8 (reaching Python as lone surrogates) answered with Python's own error as the
    message: "UnicodeEncodeError: 'utf-8' codec can't encode character '\\udcff' ..."."""
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as usage:  # a usage error, as argparse reports one
        main(command)
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert usage.value.code == 2 and line["error"]["code"] == "bad_usage"
    assert "not UTF-8 text" in line["error"]["message"] and "Unicode" not in line["error"]["message"]
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_a_missing_card_is_named_with_where_its_path_came_from(tmp_path: Path, capsys, monkeypatch) -> None:
    """`ensemble --member missing.json` and `predict --model missing.json` said "BTD_MODEL names it, else the
    shipped card", which neither did."""
    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(synthetic_slice(128)))
    monkeypatch.delenv("BTD_MODEL", raising=False)
    code, lines = run_main(["predict", "--model", str(tmp_path / "missing.json"), str(scan)], capsys)
    assert code == 2 and lines[-1]["error"]["message"] == f"Model card not found: {tmp_path / 'missing.json'}."
    monkeypatch.setenv("BTD_MODEL", str(tmp_path / "configured.json"))
    code, lines = run_main(["predict", str(scan)], capsys)
    assert code == 2 and "configured.json (BTD_MODEL names it" in lines[-1]["error"]["message"]
