"""A real Orthanc PACS for tests: the Debian package's server with its DICOMweb plugin, on a free loopback
port, with a temporary storage folder, refusing remote clients; stopped by its process id."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from monai_sr_bundle.launch import free_port

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

#: Lua filter: the PACS refuses instance 2 of any series of this patient (a STOW that fails half-way)
REFUSED_PATIENT = "REFUSE-2ND"
_FILTER = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.PatientID == "{REFUSED_PATIENT}" and tonumber(dicom.InstanceNumber) == 2 then return false end
  return true
end
"""


def orthanc_or_fail() -> str:
    """The Orthanc executable; a machine without it fails the test loudly, saying how to install it."""
    exe = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")  # not on a user's PATH
    if exe is None or not DICOMWEB_PLUGIN.exists():
        pytest.fail(
            "Orthanc or its DICOMweb plugin is not installed: install the Debian packages orthanc and "
            "orthanc-dicomweb (make system-tools, as root)"
        )
    return exe


@contextmanager
def orthanc(root: Path, timeout: float = 60) -> Iterator[str]:
    """Run Orthanc in ``root``; yields its HTTP root URL (DICOMweb at ``<url>/dicom-web``)."""
    exe = orthanc_or_fail()
    root.mkdir(parents=True, exist_ok=True)
    (root / "filter.lua").write_text(_FILTER)
    port = free_port()
    config = {
        "Name": "monai-sr-test",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "LuaScripts": [str(root / "filter.lua")],
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    url = f"http://127.0.0.1:{port}"
    with open(root / "orthanc.log", "w") as log:
        proc = subprocess.Popen([exe, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("Orthanc exited:\n" + (root / "orthanc.log").read_text()[-3000:])
                try:
                    if requests.get(f"{url}/dicom-web/studies", timeout=2).status_code == 200:
                        break
                except (requests.ConnectionError, requests.Timeout):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not answer in {timeout:g} s")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
