"""Shared test helpers: where the shared real data is, and skipping (with the reason) when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from monai_sr_bundle.data.paths import shared_data_dir

DATA = shared_data_dir()


def needs_data(folder: str | Path):
    """``skipif`` marker for tests that read ``folder`` of the shared data (``$MONAI_SR_DATA``, default
    ``../shared/data``): skipped, saying which folder is missing, when it is absent."""
    folder = Path(folder)
    return pytest.mark.skipif(not folder.is_dir(), reason=f"shared data folder {folder} not found (set MONAI_SR_DATA)")


@pytest.fixture
def needs(request):
    """Fixture form of :func:`needs_data`: ``needs(folder)`` skips the running test when ``folder`` is absent."""

    def check(folder: str | Path) -> Path:
        folder = Path(folder)
        if not folder.is_dir():
            pytest.skip(f"shared data folder {folder} not found (set MONAI_SR_DATA)")
        return folder

    return check
