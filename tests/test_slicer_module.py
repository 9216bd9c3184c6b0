"""The Slicer module's files, checked without Slicer: the module compiles, its Logic uses no GUI code (so it
runs headless and in the module's Test), the UI file holds every widget the Widget uses and the project's
sampling options, and the extension's CMake lists every file it ships."""

from __future__ import annotations

import ast
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

EXT = Path(__file__).resolve().parents[1] / "slicer_extension"
MODULE = EXT / "SuperResolution" / "SuperResolution.py"
UI = EXT / "SuperResolution" / "Resources" / "UI" / "SuperResolution.ui"
GUI_MODULES = {"qt", "ctk", "slicer.qSlicerApplication"}
GUI_ATTRIBUTES = {
    "app",
    "layoutManager",
    "errorDisplay",
    "infoDisplay",
    "confirmOkCancelDisplay",
    "tryWithErrorDisplay",
    "loadUI",
    "pip_install",
}


def tree() -> ast.Module:
    return ast.parse(MODULE.read_text())


def test_module_compiles(tmp_path):
    py_compile.compile(str(MODULE), cfile=str(tmp_path / "m.pyc"), doraise=True)


def test_module_has_the_template_classes():
    classes = {node.name for node in tree().body if isinstance(node, ast.ClassDef)}
    assert {"SuperResolution", "SuperResolutionWidget", "SuperResolutionLogic", "SuperResolutionTest"} <= classes


def test_no_gui_module_at_import_and_none_in_logic():
    top = [n for n in tree().body if isinstance(n, (ast.Import, ast.ImportFrom))]
    imported = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert not imported & GUI_MODULES
    logic = next(n for n in tree().body if isinstance(n, ast.ClassDef) and n.name == "SuperResolutionLogic")
    names = {n.id for n in ast.walk(logic) if isinstance(n, ast.Name)}
    attributes = {n.attr for n in ast.walk(logic) if isinstance(n, ast.Attribute)}
    nested = {a.name for n in ast.walk(logic) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not names & {"qt", "ctk"} and not attributes & GUI_ATTRIBUTES and not nested & GUI_MODULES


def test_ui_file_has_every_widget_the_module_uses():
    ui = ET.parse(UI)
    declared = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    assert used and used <= declared


def test_cmake_ships_every_library_file_and_resource():
    cmake = (EXT / "SuperResolution" / "CMakeLists.txt").read_text()
    lib = sorted(p.name for p in (EXT / "SuperResolution" / "SuperResolutionLib").glob("*.py"))
    assert all(f"${{MODULE_NAME}}Lib/{name}" in cmake for name in lib)
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert (
            resource in cmake
            and (EXT / "SuperResolution" / resource.replace("${MODULE_NAME}", "SuperResolution")).is_file()
        )
    top = (EXT / "CMakeLists.txt").read_text()
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ):
        assert f"set({key}" in top


def test_module_lists_no_method_names_itself():
    """The methods come from the registry (locally or from the server), so a new method needs no module change."""
    from monai_sr_bundle import methods

    strings = {n.value for n in ast.walk(tree()) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & set(methods.names())
    assigned = {getattr(t, "id", "") for n in tree().body if isinstance(n, ast.Assign) for t in n.targets}
    assert "METHODS" not in assigned


def test_sampling_options_match_the_project_and_start_disabled():
    """The UI holds the samplers and the most samples (data the Widget reads, no names in its code); they are
    the project's, and the options stay off until a stochastic method is picked."""
    from monai_sr_bundle.diffusion.samplers import SAMPLERS
    from monai_sr_bundle.request import MAX_SAMPLES

    widgets = {w.get("name"): w for w in ET.parse(UI).iter("widget")}
    sampler = [item.findtext("property/string") for item in widgets["samplerCombo"].findall("item")]
    assert sorted(sampler[1:]) == sorted(SAMPLERS) and "default" in sampler[0]
    assert widgets["samplesSpin"].findtext("property[@name='maximum']/number") == str(MAX_SAMPLES)
    for name in ("samplerCombo", "stepsSpin", "seedSpin", "samplesSpin"):
        assert widgets[name].findtext("property[@name='enabled']/bool") == "false"


def test_noise_reduction_matches_the_project_and_starts_at_auto():
    """The noise-reduction box offers the levels the project takes (0 to its most, below that "auto", which
    the Widget sends as None: estimated from the image) and stays off until a degradation-aware method is
    picked; the Widget enables it from the listing's ``noise_aware``, not from a method name."""
    from monai_sr_bundle.transforms.noise import MAX_NOISE_LEVEL

    spin = {w.get("name"): w for w in ET.parse(UI).iter("widget")}["noiseSpin"]
    assert float(spin.findtext("property[@name='maximum']/double")) == MAX_NOISE_LEVEL
    assert float(spin.findtext("property[@name='minimum']/double")) < 0
    assert float(spin.findtext("property[@name='value']/double")) < 0
    assert spin.findtext("property[@name='specialValueText']/string") == "auto"
    assert spin.findtext("property[@name='enabled']/bool") == "false"
    assert "'noise_aware'" in ast.unparse(tree())


def test_largest_output_starts_at_the_projects_limit_and_reaches_the_worker():
    """Local runs send the *Largest output* setting as the worker's ``max_output_mp`` (a CT volume of more than
    ~16 slices at x4 needs more than the default); it starts at the limit every other surface has."""
    from monai_sr_bundle.limits import MAX_OUTPUT_MP

    spin = {w.get("name"): w for w in ET.parse(UI).iter("widget")}["maxOutputSpin"]
    assert float(spin.findtext("property[@name='value']/double")) == MAX_OUTPUT_MP
    assert float(spin.findtext("property[@name='minimum']/double")) > 0
    assert '"max_output_mp": self.ui.maxOutputSpin.value' in MODULE.read_text()
