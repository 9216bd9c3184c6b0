"""GUI-free library of the SuperResolution Slicer module: everything the module's Logic does except touching
the scene, so it is tested outside Slicer. It needs only the Python standard library, numpy and SimpleITK,
all of which Slicer ships; the SR itself runs in a separate process (local) or on a MONAI Label server."""

from SuperResolutionLib.client import ClientError, MonaiLabelClient, markups_document
from SuperResolutionLib.geometry import VolumeError, check_volume, read_volume, write_volume
from SuperResolutionLib.runner import RunError, SRRun, Worker, list_methods, missing_dependencies

__all__ = [
    "ClientError",
    "MonaiLabelClient",
    "RunError",
    "SRRun",
    "VolumeError",
    "Worker",
    "check_volume",
    "list_methods",
    "markups_document",
    "missing_dependencies",
    "read_volume",
    "write_volume",
]
