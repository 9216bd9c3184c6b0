"""A pip-installed monai-sr (a federated site, a MONAI Label server) carries the bundle, not only the code."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from monai_sr_bundle.constants import BUNDLE_ROOT

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_configs_weights_and_model_card(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    names = set(zipfile.ZipFile(next(tmp_path.glob("monai_sr-*.whl"))).namelist())
    folders = ("configs", "methods", "degradations", "models", "docs")
    bundle_files = [p for p in BUNDLE_ROOT.rglob("*") if p.is_file() and p.parent.name in folders]
    expected = {
        "monai_sr_bundle/" + str(p.relative_to(BUNDLE_ROOT))
        for p in bundle_files
        if p.suffix in (".json", ".conf", ".pt", ".md")
    }
    assert {
        "monai_sr_bundle/configs/train.json",
        "monai_sr_bundle/models/srcnn_cxr_x4.pt",
        "monai_sr_bundle/configs/methods/vdsr.json",
        "monai_sr_bundle/configs/degradations/realistic_x4.json",
    } <= expected
    assert expected <= names, sorted(expected - names)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The package's modules that ``module`` (at ``path``) imports anywhere in it, functions included; a
    submodule's import of its own parents (the packages it runs inside) is not counted."""
    import ast

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and not module.startswith(name + ".") and name != module:
                found.add(name)
    return found


def _import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports (:func:`_imports`)."""
    paths = {}
    for path in (REPO / "monai_sr_bundle").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {m: _imports(p, m, set(paths)) for m, p in paths.items()}


def test_no_import_circle_in_the_package():
    """Issue 55: no module of the package imports, directly or through others, a module that imports it back,
    imports inside functions included (evaluation <-> report was the last)."""
    graph = _import_graph()
    circles = []
    for start in graph:  # every path back to ``start``, depth first
        stack, seen = [(start, (start,))], set()
        while stack:
            module, trail = stack.pop()
            for nxt in graph[module]:
                if nxt == start:
                    circles.append(trail + (start,))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + (nxt,)))
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles[:5])


#: The package's layers, bottom first, the one declaration of their order: a module imports (inside functions
#: too) only from its own layer and those below. An entry is a module or a package (all its modules) relative to
#: ``monai_sr_bundle`` (``__init__``: the package's own module); the longest entry that names a module places it.
#: docs/architecture.md shows this table as it is (:func:`test_architecture_shows_the_layers`).
LAYERS = {
    "foundations": (
        "__init__", "constants", "errors", "jsonfile", "hashing", "cancel", "progress", "launch", "limits",
        "distributed", "onnx_runtime",
    ),
    "samplers": ("diffusion",),
    "networks": ("networks",),
    "transforms": ("transforms",),
    "data": ("data", "weights", "imagenet", "losses", "metrics"),
    "inference": ("request", "tiling", "engine", "inference", "uncertainty"),
    "registry": ("overlays", "traits", "methods", "stages"),
    "runs": ("training", "pretrained", "batch", "evaluation", "report", "results", "card"),
    "surfaces": ("worker", "zoo", "federated", "cli"),
}  # fmt: skip


def _layer(module: str) -> int | None:
    """The index in :data:`LAYERS` of ``module`` (a dotted name of the package); None when no entry names it."""
    name = module.partition(".")[2] or "__init__"
    placed = [
        (len(entry), i)
        for i, entries in enumerate(LAYERS.values())
        for entry in entries
        if name == entry or name.startswith(entry + ".")
    ]
    return max(placed)[1] if placed else None


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of ``graph`` from a module to one of a higher layer, as ``a (runs) -> b (surfaces)``."""
    names = list(LAYERS)
    return sorted(
        f"{m} ({names[_layer(m)]}) -> {n} ({names[_layer(n)]})"
        for m, imported in graph.items()
        for n in imported
        if _layer(n) > _layer(m)
    )


def test_layers_import_only_downward():
    """Issue 72: every module of the package has a layer, and no import, inside a function or not, points up
    (:data:`LAYERS`); a lazy import keeps a module light, it does not make a loop or an upward arrow right."""
    graph = _import_graph()
    unplaced = sorted(m for m in graph if _layer(m) is None)
    assert not unplaced, f"place these modules in a layer of LAYERS: {', '.join(unplaced)}"
    upward = _upward_imports(graph)
    assert not upward, "imports up a layer: " + "; ".join(upward)


def test_architecture_shows_the_layers():
    shown = "\n".join(f"    {i} {name:<12} {' '.join(entries)}" for i, (name, entries) in enumerate(LAYERS.items()))
    assert shown in (REPO / "docs" / "architecture.md").read_text(), f"docs/architecture.md must show:\n{shown}"
