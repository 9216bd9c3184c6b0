"""3D Slicer module: super-resolution of the radiograph or CT volume on screen, shown beside the original,
computed on this computer (a separate process, kept for the session, running monai-sr) or by a MONAI Label
server running monai-sr's app. The Logic holds no GUI code and delegates everything but the scene to
SuperResolutionLib, which is tested outside Slicer (tests/test_slicer_lib.py)."""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
import tempfile

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from SuperResolutionLib import (
    ClientError,
    MonaiLabelClient,
    RunError,
    SRRun,
    VolumeError,
    Worker,
    check_volume,
    list_methods,
    markups_document,
    missing_dependencies,
    read_volume,
    write_volume,
)


def requirement() -> str:
    """What "install dependencies" gives pip: the repository this module was loaded from (a development
    install), else the published package name; either brings torch and MONAI."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return root if os.path.isfile(os.path.join(root, "pyproject.toml")) else "monai-sr"


class SuperResolution(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "Super-Resolution"
        parent.categories = ["Filtering"]
        parent.contributors = ["monai-sr contributors"]
        parent.helpText = (
            "Super-resolve a chest radiograph or CT volume (in-plane, slice by slice) with one of monai-sr's "
            "methods, on this computer or on a MONAI Label server running the monai-sr app. See docs/slicer.md."
        )
        parent.acknowledgementText = "NIH ChestX-ray14 (NIH Clinical Center) trained the shipped weights."


class SuperResolutionLogic(ScriptedLoadableModuleLogic):
    """Scene in, scene out; no GUI. Every failure raises VolumeError, RunError or ClientError with a
    sentence for the user, before the scene is changed. Local runs go to one warm worker process kept for
    the session (:meth:`close` ends it), so a second SR starts computing at once."""

    worker: Worker | None = None

    def python(self) -> str:
        """Slicer's own Python launcher, which has the module's dependencies once installed."""
        return shutil.which("PythonSlicer") or sys.executable

    def missing(self) -> list[str]:
        return missing_dependencies(self.python())

    def methods(self, url: str | None = None) -> list[dict]:
        """The methods on offer, the default first: those of the local install, or of the server at ``url``."""
        found = MonaiLabelClient(url).methods() if url else list_methods(self.python())
        return sorted(found, key=lambda m: not m.get("default"))

    def write_input(self, volume_node, folder: str) -> str:
        """The volume as a NIfTI file with its geometry (RAS matrix -> LPS file)."""
        if volume_node is None or volume_node.GetImageData() is None:
            raise VolumeError("the input volume has no image data; load an image first.")
        if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
            raise VolumeError(
                "the input volume has several components per voxel (colour or vector); pick a grayscale volume."
            )
        matrix = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(matrix)
        ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        path = os.path.join(folder, "input.nii.gz")
        write_volume(check_volume(slicer.util.arrayFromVolume(volume_node)), ijk_to_ras, path)
        return path

    def start_local(self, volume_node, method: str, scale: int, weights: str | None = None, **sampling) -> SRRun:
        """Start the SR process on the volume; poll ``run.running()``, then call :meth:`collect` (or
        :meth:`discard`). ``weights`` replaces the method's shipped ones; ``sampling`` holds a stochastic
        method's ``sampler``, ``steps``, ``seed`` and ``samples``, a degradation-aware one's ``noise_level``
        (None: the method's default), and the run's ``runtime`` and ``max_output_mp`` (:class:`SRRun`)."""
        folder = tempfile.mkdtemp(prefix="monai_sr_")
        try:
            path = self.write_input(volume_node, folder)
            os.mkdir(os.path.join(folder, "out"))
            if self.worker is None or self.worker.python != self.python():
                self.close()
                self.worker = Worker(self.python())
            worker = None if self.worker.busy else self.worker  # a second run at once: a worker of its own
            run = SRRun(path, os.path.join(folder, "out"), method, scale, self.python(), weights, worker=worker,
                        **sampling).start()  # fmt: skip
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        run.workdir = folder
        return run

    def collect(self, run: SRRun, input_node, output_node=None, timeout: float | None = None) -> dict:
        """The finished local run's results in the scene (see :meth:`finish`); its files are removed."""
        try:
            return self.finish(run.wait(timeout), input_node, output_node)
        finally:
            shutil.rmtree(run.workdir, ignore_errors=True)

    def discard(self, run: SRRun) -> None:
        """Stop a local run and remove its files (the module reloaded or Slicer quitting while it runs)."""
        run.cancel()
        shutil.rmtree(run.workdir, ignore_errors=True)

    def close(self) -> None:
        """End the session's worker (the module reloaded, Slicer quitting); the next local run starts one."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def finish(self, results: dict[str, str], input_node, output_node=None) -> dict:
        """Put the SR file of ``results`` into ``output_node`` (a new volume ``<input>_sr`` if None) and each
        uncertainty map beside it into a new volume ``<input>_sr_<map>``, each with its geometry; returns
        the nodes under the same keys. Every file is read before the scene is touched."""
        volumes = {key: read_volume(path) for key, path in results.items()}
        nodes = {}
        for key, (array, ijk_to_ras) in volumes.items():
            node = output_node if key == "sr" else None
            if node is None:
                name = f"{input_node.GetName()}_sr" + ("" if key == "sr" else f"_{key}")
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            matrix = vtk.vtkMatrix4x4()
            for r in range(4):
                for c in range(4):
                    matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
            slicer.util.updateVolumeFromArray(node, array)
            node.SetIJKToRASMatrix(matrix)
            nodes[key] = node
        return nodes

    def run_remote(self, volume_node, url: str, method: str, scale: int, output_node=None, **sampling) -> dict:
        """SR by the MONAI Label app: the volume is sent with the request (not stored on the server). With
        several samples the server is then asked for each uncertainty map it offers, with the SR's seed (one
        is picked if none is given) so the maps are those of the very draws behind the SR."""
        params = {"method": method, "scale": scale, **{k: v for k, v in sampling.items() if v is not None}}
        if params.get("samples", 1) > 1 and "seed" not in params:
            params["seed"] = random.randrange(2**31)
        client = MonaiLabelClient(url)
        folder = tempfile.mkdtemp(prefix="monai_sr_")
        try:
            path = self.write_input(volume_node, folder)
            data, answer = client.infer_file(path, params)
            replies = {"sr": data}
            for key in answer.get("maps", []):
                replies[key] = client.infer_file(path, {**params, "map": key})[0]
            results = {}
            for key, data in replies.items():
                results[key] = os.path.join(folder, f"{key}.nii.gz")
                with open(results[key], "wb") as f:
                    f.write(data)
            return self.finish(results, volume_node, output_node)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def server_image_id(image_id: str) -> str:
        """``image_id`` if it can name a server image (a plain name; on a PACS, the series UID), else a ClientError."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", image_id or ""):
            raise ClientError(
                f"{image_id!r} is not a server image id; open the image from MONAI Label (Next Sample) first."
            )
        return image_id

    def store_in_pacs(self, url: str, image_id: str, method: str, scale: int) -> str:
        """Have the server store the SR of its PACS series ``image_id`` back in the PACS as a derived series;
        the new series' UID (to find it in the DICOM browser)."""
        params = {"method": method, "scale": scale}
        return MonaiLabelClient(url).store_in_pacs(self.server_image_id(image_id), params)

    def send_boxes(self, url: str, image_id: str, roi_nodes) -> int:
        """Save the ROIs as the server image's abnormality boxes (each ROI named after its finding)."""
        self.server_image_id(image_id)
        rois = []
        for node in roi_nodes:
            center, size = [0.0] * 3, [0.0] * 3
            node.GetCenter(center)
            node.GetSize(size)
            rotation = vtk.vtkMatrix4x4()
            node.GetObjectToNodeMatrix(rotation)
            orientation = [rotation.GetElement(r, c) for r in range(3) for c in range(3)]
            rois.append((node.GetName(), center, size, orientation))
        MonaiLabelClient(url).save_boxes(image_id, markups_document(rois))
        return len(rois)


class SuperResolutionWidget(ScriptedLoadableModuleWidget):
    """UI only: reads the options, calls the Logic, shows the result side by side or the error."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        import qt

        panel = slicer.util.loadUI(self.resourcePath("UI/SuperResolution.ui"))
        self.layout.addWidget(panel)
        self.ui = slicer.util.childWidgetVariables(panel)
        panel.setMRMLScene(slicer.mrmlScene)
        self.logic = SuperResolutionLogic()
        self.run = None
        self.methods = {}  # name -> the method's description, which says whether it is stochastic
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.poll)
        self.ui.applyButton.clicked.connect(self.apply)
        self.ui.cancelButton.clicked.connect(self.cancel)
        self.ui.sendBoxesButton.clicked.connect(self.send_boxes)
        self.ui.storeButton.clicked.connect(self.store_in_pacs)
        self.ui.remoteCheck.toggled.connect(self.remote_toggled)
        self.ui.serverEdit.editingFinished.connect(self.list_methods)
        self.ui.methodCombo.currentTextChanged.connect(self.method_changed)
        self.list_methods()

    def cleanup(self):
        """Reloading the module or quitting Slicer stops a local run and its worker and leaves none of its files."""
        self.timer.stop()
        if self.run is not None:
            self.logic.discard(self.run)
            self.run = None
        self.logic.close()

    def remote_toggled(self, on: bool):
        self.ui.serverEdit.setEnabled(on)
        self.list_methods()

    def list_methods(self):
        """Fill the method list from where SR runs: the local install (if installed yet) or the server."""
        self.methods = {}
        self.ui.methodCombo.clear()
        try:
            if not self.ui.remoteCheck.checked and self.logic.missing():
                return  # listed once Apply has installed the dependencies
            found = self.logic.methods(self.ui.serverEdit.text if self.ui.remoteCheck.checked else None)
        except (RunError, ClientError) as e:
            slicer.util.errorDisplay(f"Cannot list the super-resolution methods: {e}")
            return
        self.methods = {m["name"]: m for m in found}
        self.ui.methodCombo.addItems(list(self.methods))

    def method_changed(self, name: str):
        """The sampling options apply to stochastic methods only, the noise reduction to degradation-aware ones
        (the CLI and the server refuse them otherwise)."""
        stochastic = bool(self.methods.get(name, {}).get("stochastic"))
        for widget in (self.ui.samplerCombo, self.ui.stepsSpin, self.ui.seedSpin, self.ui.samplesSpin):
            widget.enabled = stochastic
        self.ui.noiseSpin.enabled = bool(self.methods.get(name, {}).get("noise_aware"))

    def sampling(self) -> dict:
        """The options of the chosen method: a stochastic method's sampling (the sampler's first entry and steps 0
        stand for the method's default, None), a degradation-aware method's noise level (the spin box's lowest
        value, shown as "auto", for None: estimated from the image)."""
        described = self.methods.get(self.ui.methodCombo.currentText, {})
        if described.get("noise_aware"):
            return {"noise_level": self.ui.noiseSpin.value if self.ui.noiseSpin.value >= 0 else None}
        if not described.get("stochastic"):
            return {}
        return {
            "sampler": self.ui.samplerCombo.currentText if self.ui.samplerCombo.currentIndex > 0 else None,
            "steps": self.ui.stepsSpin.value or None,
            "seed": self.ui.seedSpin.value,
            "samples": self.ui.samplesSpin.value,
        }

    def apply(self):
        node, method, scale = (
            self.ui.inputSelector.currentNode(),
            self.ui.methodCombo.currentText,
            self.ui.scaleSpin.value,
        )
        try:
            if self.ui.remoteCheck.checked:
                with slicer.util.tryWithErrorDisplay("Super-resolution on the server failed.", waitCursor=True):
                    self.show_result(
                        self.logic.run_remote(
                            node,
                            self.ui.serverEdit.text,
                            method,
                            scale,
                            self.ui.outputSelector.currentNode(),
                            **self.sampling(),
                        )
                    )
                return
            missing = self.logic.missing()
            if missing and not self.install(missing):
                return
            if not method:
                self.list_methods()
                method = self.ui.methodCombo.currentText
            options = {
                "runtime": self.ui.runtimeCombo.currentText if self.ui.runtimeCombo.currentIndex > 0 else None,
                "max_output_mp": self.ui.maxOutputSpin.value,  # a CT volume of many slices needs more than 64
                **self.sampling(),
            }
            self.run = self.logic.start_local(node, method, scale, **options)
        except (VolumeError, RunError, ClientError) as e:
            slicer.util.errorDisplay(str(e))
            return
        self.ui.applyButton.enabled, self.ui.cancelButton.enabled = False, True
        self.ui.progressBar.setRange(0, 0)
        self.timer.start()

    def install(self, missing) -> bool:
        if not slicer.util.confirmOkCancelDisplay(
            f"Super-resolution needs {', '.join(missing)} in Slicer's Python. Install {requirement()} now "
            "(several minutes)?"
        ):
            return False
        with slicer.util.tryWithErrorDisplay("Installing the dependencies failed.", waitCursor=True):
            slicer.util.pip_install(f'"{requirement()}"')
        return not self.logic.missing()

    def poll(self):
        if self.run is None or self.run.running():
            return
        self.timer.stop()
        run, self.run = self.run, None
        self.ui.applyButton.enabled, self.ui.cancelButton.enabled = True, False
        self.ui.progressBar.setRange(0, 1)
        try:
            self.show_result(
                self.logic.collect(run, self.ui.inputSelector.currentNode(), self.ui.outputSelector.currentNode())
            )
            self.ui.statusLabel.text = f"{run.request['method']}: ran on {run.runtime} ({run.precision})"
        except (RunError, VolumeError) as e:
            slicer.util.errorDisplay(str(e))

    def cancel(self):
        if self.run is not None:
            self.run.cancel()

    def show_result(self, nodes: dict):
        """Input | SR side by side, or with uncertainty maps input | SR over the maps; views linked."""
        self.ui.outputSelector.setCurrentNode(nodes["sr"])
        maps = [nodes[key] for key in sorted(nodes) if key != "sr"]  # in one order, wherever SR ran
        shown = [self.ui.inputSelector.currentNode(), nodes["sr"], *maps]
        layout = slicer.app.layoutManager()
        layout.setLayout(
            slicer.vtkMRMLLayoutNode.SlicerLayoutTwoOverTwoView
            if len(shown) > 2
            else slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
        )
        orientation = layout.sliceWidget("Red").mrmlSliceNode().GetOrientation()
        for view, node in zip(("Red", "Yellow", "Green", "Slice4"), shown):
            widget = layout.sliceWidget(view)
            widget.mrmlSliceNode().SetOrientation(orientation)  # a layout's views differ; SR is in-plane
            composite = widget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(node.GetID())
            composite.SetLinkedControl(True)
        slicer.util.resetSliceViews()

    def send_boxes(self):
        node = self.ui.inputSelector.currentNode()
        rois = slicer.util.getNodesByClass("vtkMRMLMarkupsROINode")
        with slicer.util.tryWithErrorDisplay("Sending the boxes failed.", waitCursor=True):
            n = self.logic.send_boxes(self.ui.serverEdit.text, node.GetName() if node else "", rois)
            slicer.util.infoDisplay(f"Saved {n} box(es) on the server.")

    def store_in_pacs(self):
        node = self.ui.inputSelector.currentNode()
        method, scale = self.ui.methodCombo.currentText, self.ui.scaleSpin.value
        with slicer.util.tryWithErrorDisplay("Storing the SR in the PACS failed.", waitCursor=True):
            name = node.GetName() if node else ""
            series = self.logic.store_in_pacs(self.ui.serverEdit.text, name, method, scale)
            slicer.util.infoDisplay(f"Stored in the PACS as series {series} (AI-generated, not for diagnosis).")


class SuperResolutionTest(ScriptedLoadableModuleTest):
    """Run in Slicer with "Reload and Test": Logic end to end on pydicom's real CT slice, locally (x2 with the
    method that needs no weights, interpolation)."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_local_interpolation()
        self.test_bad_volume_leaves_scene_unchanged()

    def interpolation(self, logic) -> str:
        return next(m["name"] for m in logic.methods() if not m["trainable"])

    def test_local_interpolation(self):
        from pydicom.data import get_testdata_file

        node = slicer.util.loadVolume(get_testdata_file("CT_small.dcm"))
        logic = SuperResolutionLogic()
        run = logic.start_local(node, self.interpolation(logic), 2)
        out = logic.collect(run, node, timeout=300)["sr"]
        self.assertEqual(
            slicer.util.arrayFromVolume(out).shape[1:],
            tuple(2 * s for s in slicer.util.arrayFromVolume(node).shape[1:]),
        )
        self.assertAlmostEqual(out.GetSpacing()[0], node.GetSpacing()[0] / 2, places=5)
        self.delayDisplay("local super-resolution passed")

    def test_bad_volume_leaves_scene_unchanged(self):
        empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(VolumeError):
            SuperResolutionLogic().start_local(empty, self.interpolation(SuperResolutionLogic()), 2)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("bad input refused")
