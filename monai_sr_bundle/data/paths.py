"""Where the shared real data lives: ``$MONAI_SR_DATA``, else ``../shared/data`` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """The data root (it holds ``nih_cxr14/``, ``cxr_dicom/``, ``chest_ct/``, ``weights/``); may not exist."""
    return Path(os.environ.get("MONAI_SR_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
