"""The project's small JSON files (method overlays, degradation presets, job and site configs), read with
the one-sentence errors every boundary gives."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from monai_sr_bundle.errors import InputError


def read_json_object(path: str | os.PathLike, what: str, allowed: Iterable[str] | None = None) -> dict:
    """The JSON object in ``path``. Unreadable JSON, another type, or (with ``allowed``) other keys are
    refused in one sentence that starts with ``what`` (e.g. ``"method 'x': its overlay <path>"``)."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise InputError(f"{what} is not readable JSON ({e}).") from e
    if not isinstance(content, dict):
        raise InputError(f"{what} must be a JSON object.")
    if allowed is not None:
        allowed = list(allowed)
        unknown = sorted(set(content) - set(allowed))
        if unknown:
            raise InputError(f"{what} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}.")
    return content
