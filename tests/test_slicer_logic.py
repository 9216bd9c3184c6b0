"""The module's Logic end to end outside Slicer. Only Slicer's application cannot run here, so a thin
stand-in provides the few scene calls the Logic makes (arrayFromVolume, updateVolumeFromArray,
AddNewNodeByClass, volume and ROI nodes, vtkMatrix4x4); everything behind them is real: the SR process
running the CLI, the MONAI Label server, the files and their geometry."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ct_slice_volume

from monai_sr_bundle import methods
from monai_sr_bundle.data.markups import markups_to_boxes
from monai_sr_bundle.data.readers import read_image

MODULE_DIR = Path(__file__).resolve().parents[1] / "slicer_extension" / "SuperResolution"


class Matrix:
    def __init__(self, values=None):
        self.m = np.eye(4) if values is None else np.array(values, dtype=float)

    def GetElement(self, r, c):
        return float(self.m[r, c])

    def SetElement(self, r, c, v):
        self.m[r, c] = v


class ImageData:
    def __init__(self, components):
        self.components = components

    def GetNumberOfScalarComponents(self):
        return self.components


class Volume:
    def __init__(self, name, array=None, ijk_to_ras=None, components=1):
        self.name, self.array, self.matrix, self.components = name, array, Matrix(ijk_to_ras), components

    def GetName(self):
        return self.name

    def GetImageData(self):
        return None if self.array is None else ImageData(self.components)

    def GetIJKToRASMatrix(self, out):
        out.m = self.matrix.m.copy()

    def SetIJKToRASMatrix(self, m):
        self.matrix.m = m.m.copy()


class ROI:
    def __init__(self, name, center, size):
        self.name, self.center, self.size = name, center, size

    def GetName(self):
        return self.name

    def GetCenter(self, out):
        out[:] = self.center

    def GetSize(self, out):
        out[:] = self.size

    def GetObjectToNodeMatrix(self, out):
        out.m = np.eye(4)


class Scene:
    def __init__(self):
        self.nodes = []

    def AddNewNodeByClass(self, cls, name):
        self.nodes.append(Volume(name))
        return self.nodes[-1]


@pytest.fixture
def module(monkeypatch):
    """SuperResolution.py imported against the stand-in ``slicer`` and ``vtk``."""
    scene = Scene()
    slicer = types.ModuleType("slicer")
    slicer.mrmlScene = scene
    slicer.util = types.SimpleNamespace(
        arrayFromVolume=lambda n: n.array, updateVolumeFromArray=lambda n, a: setattr(n, "array", a)
    )
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (
        "ScriptedLoadableModule",
        "ScriptedLoadableModuleLogic",
        "ScriptedLoadableModuleTest",
        "ScriptedLoadableModuleWidget",
    ):
        setattr(base, cls, type(cls, (), {}))
    vtk = types.ModuleType("vtk")
    vtk.vtkMatrix4x4 = Matrix
    for name, mod in (("slicer", slicer), ("slicer.ScriptedLoadableModule", base), ("vtk", vtk)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    monkeypatch.delitem(sys.modules, "SuperResolution", raising=False)
    mod = importlib.import_module("SuperResolution")
    mod.scene = scene
    return mod


def ct_node() -> Volume:
    return Volume("ct", *ct_slice_volume())


def test_local_mode_adds_the_sr_volume_with_its_geometry(module):
    node = ct_node()
    logic = module.SuperResolutionLogic()
    assert logic.missing() == []
    run = logic.start_local(node, "srcnn", 4)
    out = logic.collect(run, node, timeout=300)
    assert module.scene.nodes == [out] and out.GetName() == "ct_sr" and not Path(run.workdir).exists()
    assert out.array.shape == (1, 512, 512)
    assert np.allclose(
        np.linalg.norm(out.matrix.m[:3, :3], axis=0), np.linalg.norm(node.matrix.m[:3, :3], axis=0) / [4, 4, 1]
    )


@pytest.mark.parametrize(
    "node, message",
    [(Volume("empty"), "no image data"), (Volume("rgb", np.zeros((1, 8, 8)), components=3), "several components"),
     (Volume("flat", np.ones((1, 64, 64))), "constant"), (Volume("4d", np.zeros((2, 3, 8, 8))), "4D")],
)  # fmt: skip
def test_bad_volumes_leave_the_scene_unchanged(module, node, message):
    with pytest.raises(module.VolumeError, match=message):
        module.SuperResolutionLogic().start_local(node, "srcnn", 4)
    assert module.scene.nodes == []


def test_failing_local_run_is_a_message(module):
    node = ct_node()
    node.array = node.array[:, :16, :16]
    logic = module.SuperResolutionLogic()
    run = logic.start_local(node, "srcnn", 4)
    with pytest.raises(module.RunError, match="smaller than"):
        logic.collect(run, node, timeout=120)
    assert module.scene.nodes == [] and not Path(run.workdir).exists()


def test_methods_local_and_remote_list_the_registry_default_first(module, ct_label_server):
    url, _ = ct_label_server
    logic = module.SuperResolutionLogic()
    for found in (logic.methods(), logic.methods(url)):
        assert sorted(m["name"] for m in found) == methods.names()
        assert found[0]["name"] == methods.default_name() and found[0]["default"]
    with pytest.raises(module.ClientError, match="cannot reach"):
        logic.methods("http://127.0.0.1:9")


def test_remote_mode_and_send_boxes(module, ct_label_server):
    url, studies = ct_label_server
    node = ct_node()
    logic = module.SuperResolutionLogic()
    out = logic.run_remote(node, url, "srcnn", 4)
    assert out.array.shape == (1, 512, 512) and module.scene.nodes == [out]
    # boxes drawn on the stored image (its RAS frame is the reader's LPS affine with x, y negated)
    image = read_image(studies / "ct_small.dcm")
    lps_center = (image.affine @ torch.tensor([24.5, 39.5, 0.0, 1.0], dtype=image.affine.dtype))[:3].tolist()
    spacing = image.affine[:3, :3].norm(dim=0).tolist()
    roi = ROI("Nodule", [-lps_center[0], -lps_center[1], lps_center[2]], [30 * spacing[0], 40 * spacing[1], 1.0])
    assert logic.send_boxes(url, "ct_small", [roi]) == 1
    doc = module.MonaiLabelClient(url).boxes("ct_small")
    boxes, findings = markups_to_boxes(doc, image.affine, image.shape[1:3])
    assert findings == ["Nodule"] and torch.allclose(boxes, torch.tensor([[10.0, 20.0, 40.0, 60.0]]), atol=1e-3)


def test_remote_errors_leave_the_scene_unchanged(module, ct_label_server):
    url, _ = ct_label_server
    logic = module.SuperResolutionLogic()
    with pytest.raises(module.ClientError, match="cannot reach"):
        logic.run_remote(ct_node(), "http://127.0.0.1:9", "srcnn", 4)
    with pytest.raises(module.ClientError, match=r"refused \(422\): unknown method"):
        logic.run_remote(ct_node(), url, "nope", 4)
    with pytest.raises(module.ClientError, match="not a server image id"):
        logic.send_boxes(url, "../x", [])
    assert module.scene.nodes == []
