"""The module's Logic end to end outside Slicer. Only Slicer's application cannot run here, so a thin
stand-in provides the few scene calls the Logic makes (arrayFromVolume, updateVolumeFromArray,
AddNewNodeByClass, volume and ROI nodes, vtkMatrix4x4); everything behind them is real: the SR worker
process of the CLI, the MONAI Label server, the files and their geometry. A stochastic method is test_diffusion's
tiny SR3, registered for the local runs and the server."""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ct_slice_volume
from test_slicer_lib import NAME, crop, tiny_diffusion

from monai_sr_bundle import methods
from monai_sr_bundle.batch import default_input
from monai_sr_bundle.data.markups import markups_to_boxes
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.transforms.degradation import downsample
from tools.label_server import label_server

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


@pytest.fixture(scope="module")
def server(tmp_path_factory, preloaded):
    """A real MONAI Label server running the app (srcnn by default, the newest trained version of a method
    else its shipped weights) on a studies folder holding ``ct_small.dcm``, with the tiny SR3 registered and
    trained once; yields (URL, studies folder)."""
    root = tmp_path_factory.mktemp("slicer_server")
    studies, model = root / "studies", root / "model"
    studies.mkdir()
    model.mkdir()
    shutil.copy(default_input(), studies / "ct_small.dcm")
    overlays, weights = tiny_diffusion(root / "tiny")
    shutil.copy(weights, model / f"{NAME}_cxr_x4_v1.pt")
    conf = {"method": "srcnn", "model_dir": model, "weights": "latest"}
    with label_server(root, studies, conf, env={"MONAI_SR_METHODS": overlays}, preloaded=preloaded) as url:
        yield url, studies


def ct_node() -> Volume:
    return Volume("ct", *ct_slice_volume())


@pytest.mark.slow
def test_local_mode_adds_the_sr_volume_with_its_geometry(module):
    node = ct_node()
    logic = module.SuperResolutionLogic()
    assert logic.missing() == []
    run = logic.start_local(node, "srcnn", 4)
    nodes = logic.collect(run, node, timeout=300)
    assert list(nodes) == ["sr"]
    out = nodes["sr"]
    assert module.scene.nodes == [out] and out.GetName() == "ct_sr" and not Path(run.workdir).exists()
    assert out.array.shape == (1, 512, 512)
    assert np.allclose(
        np.linalg.norm(out.matrix.m[:3, :3], axis=0), np.linalg.norm(node.matrix.m[:3, :3], axis=0) / [4, 4, 1]
    )
    # the session's worker keeps the method loaded: the second SR is computed by the same process
    process = logic.worker.process
    again = logic.start_local(node, "srcnn", 4)
    assert logic.collect(again, node, out, timeout=300) == {"sr": out} and again.network_started
    assert logic.worker.process is process and module.scene.nodes == [out]
    logic.close()  # as the module's cleanup does when it is reloaded or Slicer quits
    assert process.poll() == 0 and logic.worker is None


@pytest.mark.parametrize(
    "node, message",
    [(Volume("empty"), "no image data"), (Volume("rgb", np.zeros((1, 8, 8)), components=3), "several components"),
     (Volume("flat", np.ones((1, 64, 64))), "constant"), (Volume("4d", np.zeros((2, 3, 8, 8))), "4D")],
)  # fmt: skip
def test_bad_volumes_leave_the_scene_unchanged(module, node, message):
    with pytest.raises(module.VolumeError, match=message):
        module.SuperResolutionLogic().start_local(node, "srcnn", 4)
    assert module.scene.nodes == []


@pytest.mark.slow
def test_failing_local_run_is_a_message(module):
    node = ct_node()
    node.array = node.array[:, :16, :16]
    logic = module.SuperResolutionLogic()
    run = logic.start_local(node, "srcnn", 4)
    with pytest.raises(module.RunError, match="smaller than"):
        logic.collect(run, node, timeout=120)
    assert module.scene.nodes == [] and not Path(run.workdir).exists()


@pytest.mark.slow
def test_local_run_takes_the_largest_output_setting(module):
    """``max_output_mp`` reaches the worker: the CT slice at x4 (0.26 megapixels) is refused under a lower limit,
    in the worker's sentence, before it is read."""
    node = ct_node()
    logic = module.SuperResolutionLogic()
    run = logic.start_local(node, "bicubic", 4, max_output_mp=0.1)
    assert run.request["max_output_mp"] == 0.1
    with pytest.raises(module.RunError, match="would be 0.26 megapixels, more than the limit of 0.1 "):
        logic.collect(run, node, timeout=120)
    assert module.scene.nodes == [] and not Path(run.workdir).exists()
    logic.close()


@pytest.mark.slow
def test_methods_local_and_remote_list_the_registry_default_first(module, server):
    url, _ = server
    logic = module.SuperResolutionLogic()
    local, remote = logic.methods(), logic.methods(url)
    assert sorted(m["name"] for m in local) == methods.names()
    assert sorted(m["name"] for m in remote) == sorted([*methods.names(), NAME])  # the server's own method too
    for found in (local, remote):
        assert found[0]["name"] == methods.default_name() and found[0]["default"]
    stochastic = {name for name in methods.names() if methods.get(name).stochastic}
    assert stochastic >= {"sr3", "adsr"}
    assert {m["name"] for m in remote if m["stochastic"]} == stochastic | {NAME}  # what enables the sampling options
    with pytest.raises(module.ClientError, match="cannot reach"):
        logic.methods("http://127.0.0.1:9")


def test_remote_mode_and_send_boxes(module, server):
    url, studies = server
    node = ct_node()
    logic = module.SuperResolutionLogic()
    out = logic.run_remote(node, url, "srcnn", 4)["sr"]
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


def test_remote_errors_leave_the_scene_unchanged(module, server):
    url, _ = server
    logic = module.SuperResolutionLogic()
    with pytest.raises(module.ClientError, match="cannot reach"):
        logic.run_remote(ct_node(), "http://127.0.0.1:9", "srcnn", 4)
    with pytest.raises(module.ClientError, match=r"refused \(422\): unknown method"):
        logic.run_remote(ct_node(), url, "nope", 4)
    with pytest.raises(module.ClientError, match=r"refused \(422\): method 'tiny_diffusion': unknown sampler 'euler'"):
        logic.run_remote(ct_node(), url, NAME, 4, sampler="euler", samples=2)
    with pytest.raises(module.ClientError, match=r"refused \(422\): method 'srcnn' is deterministic"):
        logic.run_remote(ct_node(), url, "srcnn", 4, steps=2)
    with pytest.raises(module.ClientError, match="not a server image id"):
        logic.send_boxes(url, "../x", [])
    with pytest.raises(module.ClientError, match="not a server image id"):
        logic.store_in_pacs(url, "../x", "srcnn", 4)
    with pytest.raises(module.ClientError, match=r"refused \(422\): store_in_pacs needs the app to run on a PACS"):
        logic.store_in_pacs(url, "ct_small", "srcnn", 4)  # a studies folder, not a PACS
    assert module.scene.nodes == []


def crop_node() -> Volume:
    return Volume("ct", *crop())


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> str:
    """The tiny SR3 registered for this test and the SR processes it starts; returns its weights file."""
    overlays, weights = tiny_diffusion(tmp_path / "tiny")
    monkeypatch.setenv("MONAI_SR_METHODS", overlays)
    return weights


@pytest.mark.slow
def test_local_stochastic_run_adds_the_maps_beside_the_sr(module, tiny):
    node = crop_node()
    logic = module.SuperResolutionLogic()
    run = logic.start_local(node, NAME, 4, tiny, sampler="dpmpp", steps=2, seed=3, samples=2)
    nodes = logic.collect(run, node, timeout=300)
    assert {k: n.GetName() for k, n in nodes.items()} == {
        "sr": "ct_sr", "std": "ct_sr_std", "lr_consistency": "ct_sr_lr_consistency"
    }  # fmt: skip
    assert module.scene.nodes == list(nodes.values()) and not Path(run.workdir).exists()
    assert nodes["sr"].array.shape == (1, 160, 160)
    for key in ("std", "lr_consistency"):
        assert nodes[key].array.shape == nodes["sr"].array.shape
        assert np.array_equal(nodes[key].matrix.m, nodes["sr"].matrix.m)  # the SR's geometry


def test_cancelled_stochastic_run_leaves_no_output_and_no_temp_files(module, tiny, tmp_path, monkeypatch):
    from SuperResolutionLib.runner import private_launch

    private_launch()  # the session's private working folder, made by its first run and kept: not this run's file
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TMPDIR", str(temp))  # the SR process's own temp files too
    node, logic = ct_node(), module.SuperResolutionLogic()
    options = {"sampler": "ddpm", "steps": 20, "samples": 64}  # 64 x 20 denoiser passes over 512 x 512 px
    runs = [logic.start_local(node, NAME, 4, tiny, **options) for _ in range(2)]
    logic.discard(runs[1])  # as when the module is reloaded
    time.sleep(1.0)
    assert runs[0].running()
    runs[0].cancel()
    with pytest.raises(module.RunError, match="cancelled"):
        logic.collect(runs[0], node)
    assert not any(run.running() for run in runs)
    assert module.scene.nodes == [] and list(temp.iterdir()) == []
    assert runs[1].worker is not logic.worker and not logic.worker.alive()  # the second ran beside the first


def test_remote_stochastic_run_fetches_the_maps_of_its_own_draws(module, server):
    """No seed given: the Logic picks one for the SR and its maps alike, so the LR-consistency map is that
    of the very SR it came with: |degrade(SR) - LR|, each LR pixel spread over its scale x scale SR pixels."""
    url, _ = server
    node, mine = crop_node(), Volume("mine")
    logic = module.SuperResolutionLogic()
    nodes = logic.run_remote(node, url, NAME, 4, mine, sampler="ddim", steps=2, samples=2)
    assert nodes["sr"] is mine and sorted(nodes) == ["lr_consistency", "sr", "std"]
    assert sorted(n.GetName() for n in module.scene.nodes) == ["ct_sr_lr_consistency", "ct_sr_std"]
    lo, span = node.array.min(), np.ptp(node.array)  # the reader's map to [0, 1], where SR is degraded
    shrunk = downsample(torch.from_numpy((mine.array - lo) / span), 4).numpy()
    gap = np.abs(shrunk - (node.array - lo) / span) * span
    lr_consistency = nodes["lr_consistency"].array
    assert lr_consistency.shape == mine.array.shape and np.array_equal(nodes["std"].matrix.m, mine.matrix.m)
    assert np.abs(lr_consistency[:, ::4, ::4] - gap).max() < 1e-4 * span
    assert nodes["std"].array.max() > 0
