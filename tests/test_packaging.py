"""A pip-installed monai-sr (a federated site, a MONAI Label server) carries the bundle, not only the code."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from monai_sr_bundle.methods import BUNDLE_ROOT

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


def test_no_import_circle_in_the_package():
    """Issue 55: no module of the package imports, directly or through others, a module that imports it back,
    imports inside functions included (evaluation <-> report was the last)."""
    root = REPO / "monai_sr_bundle"
    paths = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: _imports(p, m, set(paths)) for m, p in paths.items()}
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
