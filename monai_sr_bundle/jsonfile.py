"""The project's small JSON files (method overlays, degradation presets, job and site configs), read with
the one-sentence errors every boundary gives, and the one schema check of a JSON object from outside (those
files, the Slicer worker's request lines, MONAI Label's params): :func:`check_object`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from monai_sr_bundle.errors import InputError, shown


@dataclass(frozen=True)
class Kind:
    """What a value in a JSON object must be (a schema maps keys to kinds): ``what`` says it in the refusal,
    ``test`` checks it."""

    what: str
    test: Callable[[object], bool]

    def or_null(self) -> Kind:
        return Kind(f"{self.what} or null", lambda v: v is None or self.test(v))


def text(what: str) -> Kind:
    """A non-empty string (a path, a name): an empty one would name the current folder or nothing."""
    return Kind(what, lambda v: isinstance(v, str) and v != "")


def whole(lo: int, hi: int, why: str = "") -> Kind:
    """A whole number from ``lo`` to ``hi`` (``why``: the reason for the bound, in parentheses)."""
    return Kind(
        f"a whole number from {lo} to {hi}{f' ({why})' if why else ''}",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
    )


#: a value that is no list or object (a request's options are numbers, names and paths)
SINGLE = Kind("a single value, not a list or object", lambda v: not isinstance(v, (list, dict)))


def _json_type(value: object) -> str:
    """The JSON name of ``value``'s type, as a refusal says it."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def check_object(
    value: object,
    what: str,
    schema: Mapping[str, Kind | None] | None = None,
    required: Iterable[str] = (),
    others: bool = False,
) -> dict:
    """``value`` as a JSON object with only the keys of ``schema`` (None, or ``others``: any other key too, as
    MONAI Label's params carry the client's own), the ``required`` ones present and each value of its key's
    kind (None: any value); else one sentence that starts with ``what``."""
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object, not a JSON {_json_type(value)}.")
    if schema is None:
        return value
    unknown = [] if others else sorted(set(value) - set(schema))
    if unknown:
        raise InputError(f"{what} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(schema)}.")
    missing = [key for key in required if key not in value]
    if missing:
        raise InputError(f'{what} needs "{missing[0]}", {schema[missing[0]].what}.')
    for key, kind in schema.items():
        if key in value and kind is not None and not kind.test(value[key]):
            raise InputError(f'{what}: "{key}" must be {kind.what}, got {shown(value[key])}.')
    return value


def read_json_object(path: str | os.PathLike, what: str, allowed: Iterable[str] | None = None) -> dict:
    """The JSON object in ``path`` with only the keys ``allowed`` (None: any), checked by :func:`check_object`;
    unreadable JSON is refused in one sentence that starts with ``what`` (e.g. ``"method 'x': its overlay
    <path>"``), and so is a key given twice in one object (JSON readers keep the last: a second site of one name
    would vanish)."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise InputError(f"{what} is not readable JSON ({e}).") from e
    return check_object(content, what, None if allowed is None else dict.fromkeys(allowed))


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key {twice[0]!r} is given twice in one object")
    return dict(pairs)
