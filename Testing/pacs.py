"""A real PACS for tests: Debian's Orthanc with its DICOMweb plugin, started as a process on free loopback ports with
its storage in a temporary folder, and stopped by its pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "radiology", "s3cret-for-tests"
AE_TITLE = "ORTHANC"
CLIENT_AE_TITLE = "SPATIALAL"  # the only DICOM client Orthanc answers: this AE title, from 127.0.0.1


def orthanc_executable() -> str | None:
    found = shutil.which("Orthanc")
    return found or next((path for path in ORTHANC_CANDIDATES if os.access(path, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OrthancServer:
    """Orthanc with basic authentication (``USER``/``PASSWORD``) and DICOMweb at ``/dicom-web``, answering HTTP from
    127.0.0.1 only, and DICOM (C-STORE, C-FIND, C-GET) only from ``CLIENT_AE_TITLE`` at 127.0.0.1. Orthanc 1.10
    cannot bind its ports to the loopback address alone: it refuses everyone else instead."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> OrthancServer:
        executable = orthanc_executable()
        if executable is None or not DICOMWEB_PLUGIN.is_file():
            raise RuntimeError(
                "Orthanc and its DICOMweb plugin are not installed (apt install orthanc orthanc-dicomweb)."
            )
        storage = self.folder / "storage"
        storage.mkdir(parents=True)
        configuration = {
            "Name": "spatial-al-tests",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AE_TITLE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"tests": {"AET": CLIENT_AE_TITLE, "Host": "127.0.0.1", "Port": free_port()}},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(configuration))
        log = (self.folder / "orthanc.log").open("w")
        self.process = subprocess.Popen(
            [executable, str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s")

    def get(self, path: str) -> object:
        request = urllib.request.Request(self.url + path)
        request.add_header("Authorization", "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
