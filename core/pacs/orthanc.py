"""A local Orthanc for development and tests: ``python -m core pacs serve-dev``.

Loopback only, a temporary storage folder, the DICOMweb plugin on ``/dicom-web/``, one user with a random password,
a free HTTP port, no DICOM (DIMSE) listener; stops cleanly and removes its folder. Needs Debian's ``orthanc`` and
``orthanc-dicomweb`` packages (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def available() -> str | None:
    """None when a development Orthanc can start here, else why not."""
    if not ORTHANC.is_file():
        return f"{ORTHANC} is missing (Debian package orthanc)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} is missing (Debian package orthanc-dicomweb)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class DevOrthanc:
    """A running development Orthanc: ``rest`` (Orthanc's REST root), ``dicomweb`` (its DICOMweb root)."""

    user: str = "btd"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = field(default_factory=_free_port)
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="btd-orthanc-")))
    process: subprocess.Popen | None = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    def start(self, timeout_s: float = 30.0) -> DevOrthanc:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        config = {
            "Name": "btd-dev",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "DicomServerEnabled": False,
            "DicomPort": _free_port(),
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
            "StableAge": 1,
            "HttpCompressionEnabled": False,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)  # the password
        log = (self.folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen([str(ORTHANC), str(path)], stdout=log, stderr=subprocess.STDOUT)
        self._wait(timeout_s)
        return self

    def _wait(self, timeout_s: float) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Orthanc stopped at start; see {self.folder / 'orthanc.log'}")
            try:
                if requests.get(f"{self.rest}/system", auth=(self.user, self.password), timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within the time allowed")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> DevOrthanc:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
