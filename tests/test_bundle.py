"""The MONAI bundle as users run it: real ``python -m monai.bundle`` subprocesses from the bundle root.

Every command writes under pytest's tmp_path (``--output_dir``, ``--run_dir``, ``--ckpt_path``, ``--filepath``)
and uses freshly initialised weights saved there, so nothing depends on shipped weights and nothing is written
inside the repository. The export commands tested here are the ones the README documents.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DATA, USER_PYTHON, needs_data
from PIL import Image

import monai_sr_bundle
from monai_sr_bundle import methods
from monai_sr_bundle.batch import run_inference
from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.stages import stage_configs
from monai_sr_bundle.weights import load_weights

BUNDLE = Path(monai_sr_bundle.__file__).resolve().parent
REPO = BUNDLE.parent
NIH = DATA / "nih_cxr14"
SCALE = 4


def bundle_process(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` as a process from the bundle root, stdout and stderr together in
    ``.stdout``: for the tests of what a user's process prints last and exits with."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [USER_PYTHON, "-m", "monai.bundle", *map(str, args)],
        cwd=BUNDLE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def run_config(config: str, method: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of ``config`` (one file or a merged list) for ``method``, in this process
    (:func:`monai_bundle`)."""
    return monai_bundle("run", "--config_file", config, "--method", method, *args)


def monai_bundle(command: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <command> <args>`` in this process: the command line parsed by fire as the CLI
    parses it, from the bundle root, with what a process would print (stdout, stderr, every logger's stream
    handlers, warnings) together in ``.stdout``; an error is exit status 1 with its traceback there (fire's
    usage errors: 2). A process per command cost seconds of imports and proved nothing more."""
    import contextlib
    import io
    import logging
    import traceback
    import warnings

    import fire
    from monai.bundle import scripts

    def stream_handlers() -> list[logging.StreamHandler]:
        loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
        handlers = [h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers]
        # a handler left on a stream that is gone (an earlier test's captured stderr) cannot be redirected
        return [h for h in handlers if type(h) is logging.StreamHandler and not getattr(h.stream, "closed", False)]

    command = [command, *map(str, args)]
    out, code, cwd = io.StringIO(), 0, os.getcwd()
    root = logging.getLogger()
    root_state = list(root.handlers), root.level  # the run's logging.conf replaces the root's handlers
    streams = {h: h.setStream(out) for h in stream_handlers()}  # MONAI's loggers keep the stdout they met first
    try:
        os.chdir(BUNDLE)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda msg, cat, f, n, *_: out.write(warnings.formatwarning(msg, cat, f, n))
            try:
                fire.Fire({command[0]: getattr(scripts, command[0])}, command=command)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(cwd)
        root.handlers[:] = root_state[0]
        root.setLevel(root_state[1])
        for handler in stream_handlers():  # those the run made point at this process's stdout again
            handler.setStream(streams.get(handler) or sys.stdout)
    return subprocess.CompletedProcess(command, code, out.getvalue(), None)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc


def _configs(*names: str) -> str:
    return "[" + ",".join(f"'configs/{n}'" for n in names) + "]"


def train_files(method: str, stage: str | None = None) -> str:
    """The ``--config_file`` list that trains ``method``'s ``stage`` (default: its last), as the docs write it."""
    return "[" + ",".join(repr(f) for f in stage_configs(methods.get(method), stage)) + "]"


def _method_args(method: str) -> tuple[str, ...]:
    """How the docs write the export commands: the inference config, the method chosen with --method."""
    return ("--config_file", "configs/inference.json", "--method", method)


def _net(method: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return methods.get(method, scale=SCALE).network().eval()


def _png_pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int32)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundle")


@pytest.fixture(scope="module")
def ckpts(work) -> dict[str, Path]:
    """Freshly initialised srcnn/vdsr state dicts, built as the method overlays build them."""
    out = {}
    for method in ("srcnn", "vdsr"):
        out[method] = work / f"{method}_init.pt"
        torch.save(_net(method).state_dict(), out[method])
    return out


@pytest.fixture(scope="module")
def inputs(work) -> Path:
    """Two small PNGs and a float NIfTI in [0, 1] (so outputs can be compared without 8-bit rounding)."""
    d = work / "inputs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in (("a.png", (40, 36)), ("b.png", (36, 44))):
        Image.fromarray((rng.random((h, w)) * 255).astype(np.uint8)).save(d / name)
    arr = rng.random((32, 40)).astype(np.float32)
    arr.flat[[0, -1]] = 0.0, 1.0
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(d / "c.nii.gz"))
    return d


EXPECTED_NAMES = ["a_sr.png", "b_sr.png", "c_sr.nii.gz"]


def _check_sizes(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == EXPECTED_NAMES
    with Image.open(out / "a_sr.png") as im:
        assert im.size == (40 * SCALE, 36 * SCALE)
    with Image.open(out / "b_sr.png") as im:
        assert im.size == (36 * SCALE, 44 * SCALE)
    assert sitk.ReadImage(str(out / "c_sr.nii.gz")).GetSize()[:2] == (40 * SCALE, 32 * SCALE)


@pytest.fixture(scope="module")
def srcnn_out(work, inputs, ckpts) -> Path:
    """Plain PyTorch inference with srcnn and a tmp checkpoint: the reference for the TRT and ONNX overlays."""
    out = work / "out_srcnn"
    _ok(
        run_config(
            "configs/inference.json", "srcnn", "--ckpt_path", ckpts["srcnn"], "--input", inputs, "--output_dir", out
        )
    )
    return out


# ------------------------------------------------------------------------------------------- inference.json


def test_configs_hold_values_and_call_named_functions():
    """Issue 55: a decision in a bundle config is a named package function it calls (``_target_``), not Python
    in a string: at most 50 lines with a ``$`` expression, none with a lambda, a conditional or slicing."""
    configs = BUNDLE_ROOT / "configs"
    lines = [
        line
        for path in [*configs.glob("*.json"), *(configs / "methods").glob("*.json")]
        for line in path.read_text().splitlines()
        if "$" in line
    ]
    assert len(lines) <= 50
    assert not [line for line in lines if "lambda" in line or " if " in line or "[:" in line]


def test_every_switch_is_read_through_flag():
    """``python -m monai.bundle run --x false`` passes the text "false", which Python reads as true
    (``--validate_in_training false`` once validated all the same): a config's true/false setting (a key whose
    default is a bool) reaches Python only as the ``value`` of ``monai_sr_bundle.flag`` or ``off``, never as a
    bare ``@x`` or inside a ``$`` expression."""
    import re

    configs = BUNDLE_ROOT / "configs"
    files = [*configs.glob("*.json"), *(configs / "methods").glob("*.json")]
    trees = {path.name: json.loads(path.read_text()) for path in files}
    switches = {k for tree in trees.values() for k, v in tree.items() if isinstance(v, bool) and "#" not in k}
    assert switches >= {"validate_in_training", "compile", "relativistic", "lower_is_better", "lpips", "resume"}
    bare = []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            read_as_switch = node.get("_target_") in ("monai_sr_bundle.flag", "monai_sr_bundle.off")
            for key, value in node.items():
                if not (read_as_switch and key == "value"):
                    walk(value, f"{where}#{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}#{i}")
        elif isinstance(node, str) and any(re.search(rf"@{s}\b", node) for s in switches):
            bare.append(f"{where}: {node}")

    for name, tree in trees.items():
        walk(tree, name)
    assert not bare


@pytest.mark.slow
def test_run_bicubic(work, inputs):
    out = work / "out_bicubic"
    _ok(run_config("configs/inference.json", "bicubic", "--input", inputs, "--output_dir", out))
    _check_sizes(out)


ZOO_SCHEMA = DATA.parent / "tools" / "model-zoo-ci" / "meta_schema_20240725.json"


@pytest.mark.skipif(not ZOO_SCHEMA.is_file(), reason=f"the model zoo's metadata schema {ZOO_SCHEMA} not found")
@pytest.mark.slow
def test_metadata_passes_the_zoo_schema(tmp_path):
    """MONAI's own verify_metadata against the schema metadata.json names (copied: the command downloads it), in
    this process: the command line adds only MONAI's import (15-30 s on a loaded CI machine). It raises on a
    schema violation."""
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    schema.write_bytes(ZOO_SCHEMA.read_bytes())
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(schema))


@pytest.mark.slow
def test_dicom_input_gives_a_derived_series_or_the_format_asked(tmp_path):
    """The default input (a real CT slice): a derived DICOM naming the method, or NIfTI with --output_format."""
    import pydicom

    _ok(run_config("configs/inference.json", "bicubic", "--output_dir", tmp_path / "dcm"))
    (written,) = (tmp_path / "dcm").iterdir()
    ds = pydicom.dcmread(written)
    assert written.name == "CT_small_sr.dcm" and ds.ManufacturerModelName == "monai-sr bicubic"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.Rows == 128 * SCALE
    _ok(run_config("configs/inference.json", "bicubic", "--output_dir", tmp_path / "nii", "--output_format", "nifti"))
    assert [p.name for p in (tmp_path / "nii").iterdir()] == ["CT_small_sr.nii.gz"]


@pytest.mark.slow
def test_max_output_mp_is_the_bundles_limit_too(tmp_path):
    """``max_output_mp`` of inference.json (the CLI's default) reaches ``run_inference``: the default input at x4
    (0.26 megapixels) is refused under 0.1, from its header, in one sentence."""
    from monai_sr_bundle.limits import MAX_OUTPUT_MP

    assert json.loads((BUNDLE / "configs" / "inference.json").read_text())["max_output_mp"] == MAX_OUTPUT_MP
    proc = run_config("configs/inference.json", "bicubic", "--output_dir", tmp_path / "out", "--max_output_mp", 0.1)
    assert proc.returncode != 0 and "would be 0.26 megapixels, more than the limit of 0.1 " in proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_srcnn_uses_given_ckpt(srcnn_out, inputs, ckpts, tmp_path):
    _check_sizes(srcnn_out)
    # the same as the in-process entry point with those weights (so --ckpt_path was honoured)
    srcnn = methods.get("srcnn", SCALE)
    ref = run_inference(inputs, srcnn.predictor(ckpts["srcnn"]), tmp_path, progress=False)
    for p in map(Path, ref):
        if p.suffix == ".png":
            assert np.array_equal(_png_pixels(p), _png_pixels(srcnn_out / p.name))
        else:
            a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(q))) for q in (p, srcnn_out / p.name))
            np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_run_unknown_method(work, inputs):
    proc = run_config("configs/inference.json", "espcn", "--input", inputs, "--output_dir", work / "out_unknown")
    assert proc.returncode != 0
    assert f"unknown method 'espcn'; available: {', '.join(methods.names())}" in proc.stdout
    assert not (work / "out_unknown").exists()


@pytest.mark.slow
def _folder_of_a_and_b(folder: Path, inputs: Path) -> Path:
    """``folder`` holding copies of the inputs a.png and b.png."""
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes((inputs / name).read_bytes())
    return folder


@pytest.mark.slow
def test_run_corrupt_among_good(work, inputs):
    d = _folder_of_a_and_b(work / "with_corrupt", inputs)
    (d / "broken.png").write_bytes((inputs / "a.png").read_bytes()[:300])  # cut short
    out = work / "out_corrupt"
    proc = bundle_process(
        "run", "--config_file", "configs/inference.json", "--method", "bicubic", "--input", d, "--output_dir", out
    )
    assert proc.returncode != 0
    assert f"{d / 'broken.png'}: cannot be read as an image" in proc.stdout
    assert "1 of 3 inputs failed" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a_sr.png", "b_sr.png", "failed.csv"]


@pytest.mark.slow
def test_run_into_the_input_folder_keeps_every_input_and_says_why_in_one_sentence(work, inputs):
    d = _folder_of_a_and_b(work / "in_is_out", inputs)
    (d / "b_sr.png").write_bytes((inputs / "a.png").read_bytes())  # another image, named like b's output
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    proc = bundle_process(
        "run", "--config_file", "configs/inference.json", "--method", "bicubic", "--input", d, "--output_dir", d
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        f"error: {d / 'b_sr.png'}: the output of {d / 'b.png'} would replace an input image; give an output folder "
        "apart from the inputs (nothing was written)."
    )
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


# ------------------------------------------------------------------------------------------- TensorRT overlay


@pytest.mark.slow
def test_trt_overlay_falls_back_on_cpu(work, inputs, ckpts, srcnn_out):
    out = work / "out_trt"
    proc = _ok(
        run_config(
            _configs("inference.json", "inference_trt.json"),
            "srcnn",
            "--ckpt_path",
            ckpts["srcnn"],
            "--input",
            inputs,
            "--output_dir",
            out,
        )
    )
    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        assert "trt_compile() has no effect" in proc.stdout
    _check_sizes(out)
    for name in EXPECTED_NAMES[:2]:
        assert np.array_equal(_png_pixels(out / name), _png_pixels(srcnn_out / name))
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(d / "c_sr.nii.gz"))) for d in (out, srcnn_out))
    np.testing.assert_allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------------------- verify and export


@pytest.mark.parametrize("method", ["bicubic", "srcnn", "vdsr"])
@pytest.mark.slow
def test_verify_net_in_out(method):
    proc = _ok(
        monai_bundle("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", *_method_args(method))
    )
    assert "data shape of network is verified with no error" in proc.stdout


@pytest.mark.parametrize("method", ["srcnn", "vdsr"])
@pytest.mark.slow
def test_ckpt_export_torchscript(method, work, ckpts):
    """TorchScript by tracing (the pre-upsampling's Python checks do not script); the traced graph keeps
    the spatial size dynamic."""
    ts = work / f"{method}.ts"
    _ok(
        monai_bundle(
            "ckpt_export",
            "network_def",
            "--filepath",
            ts,
            "--ckpt_file",
            ckpts[method],
            "--meta_file",
            "configs/metadata.json",
            *_method_args(method),
            "--use_trace",
            "True",
            "--input_shape",
            "[1,1,32,32]",
        )
    )
    extra = {"metadata.json": ""}
    model = torch.jit.load(str(ts), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["scale"] == SCALE
    eager = methods.get(method, SCALE).load(ckpts[method])
    for shape in ((1, 1, 32, 32), (1, 1, 48, 40)):
        x = torch.rand(shape)
        with torch.no_grad():
            y = model(x)
            assert tuple(y.shape) == (shape[0], 1, shape[2] * SCALE, shape[3] * SCALE)
            assert (y - eager(x)).abs().max().item() < 1e-5


ONNX_KWARGS = (
    "{'input_names': ['image'], 'output_names': ['pred'], "
    "'dynamic_axes': {'image': {0: 'batch', 2: 'x', 3: 'y'}, 'pred': {0: 'batch', 2: 'X', 3: 'Y'}}}"
)


@pytest.fixture(scope="module")
def onnx_models(work, ckpts) -> dict[str, Path]:
    """srcnn and vdsr exported once with ``onnx_export`` (torch 2.13's dynamo exporter, dynamic batch and size)."""
    out = {}
    for method in ("srcnn", "vdsr"):
        out[method] = work / f"{method}.onnx"
        _ok(
            monai_bundle(
                "onnx_export",
                "network_def",
                "--filepath",
                out[method],
                "--ckpt_file",
                ckpts[method],
                "--meta_file",
                "configs/metadata.json",
                *_method_args(method),
                "--input_shape",
                "[1,1,32,32]",
                "--converter_kwargs",
                ONNX_KWARGS,
            )
        )
    return out


@pytest.mark.parametrize("method", ["srcnn", "vdsr"])
@pytest.mark.slow
def test_onnx_export_matches_torch(method, onnx_models, ckpts):
    """ONNX Resize (cubic, a=-0.75, half_pixel, edge clamp) reproduces torch's bicubic, borders included:
    measured max |ONNX - torch| ~1.3e-7 for srcnn and ~8e-6 for vdsr (20 float32 layers on random He-init
    weights; borders no worse than the interior); the bar is 1e-4 everywhere."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_models[method]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    eager = methods.get(method, SCALE).load(ckpts[method])
    for shape in ((1, 1, 32, 32), (1, 1, 48, 40)) + (((2, 1, 40, 48),) if method == "srcnn" else ()):
        x = torch.rand(shape)
        (y,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = eager(x).numpy()
        assert y.shape == ref.shape == (shape[0], 1, shape[2] * SCALE, shape[3] * SCALE)
        diff = np.abs(y - ref)
        assert diff.max() < 1e-4, (shape, float(diff.max()), float(diff[..., 8:-8, 8:-8].max()))


@pytest.mark.slow
def test_inference_onnx_overlay(work, inputs, onnx_models, srcnn_out):
    out = work / "out_onnx"
    _ok(
        run_config(
            _configs("inference.json", "inference_onnx.json"),
            "srcnn",
            "--onnx_path",
            onnx_models["srcnn"],
            "--input",
            inputs,
            "--output_dir",
            out,
        )
    )
    _check_sizes(out)
    for name in EXPECTED_NAMES[:2]:  # 8-bit: at most one grey level apart
        assert np.abs(_png_pixels(out / name) - _png_pixels(srcnn_out / name)).max() <= 1
    a, b = (sitk.ReadImage(str(d / "c_sr.nii.gz")) for d in (out, srcnn_out))
    assert np.abs(sitk.GetArrayFromImage(a) - sitk.GetArrayFromImage(b)).max() < 1e-4
    assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()


@pytest.mark.slow
def test_inference_onnx_overlay_finds_the_model_next_to_the_weights(work, inputs, onnx_models, srcnn_out):
    """As the model card writes it (no --onnx_path): the .onnx beside the method's weights file."""
    out = work / "out_onnx_default"
    _ok(
        run_config(
            _configs("inference.json", "inference_onnx.json"),
            "srcnn",
            "--ckpt_path",
            onnx_models["srcnn"].with_suffix(".pt"),
            "--input",
            inputs,
            "--output_dir",
            out,
        )
    )
    _check_sizes(out)
    for name in EXPECTED_NAMES[:2]:
        assert np.abs(_png_pixels(out / name) - _png_pixels(srcnn_out / name)).max() <= 1


@pytest.mark.slow
def test_inference_onnx_refuses_compile(work, inputs, onnx_models):
    """``--compile True`` reaches the predictor (its parity: tests/test_inference.py); on ONNX Runtime it is
    refused in one sentence, nothing written."""
    out = work / "out_onnx_compiled"
    proc = run_config(
        _configs("inference.json", "inference_onnx.json"), "srcnn", "--onnx_path", onnx_models["srcnn"],
        "--compile", "True", "--input", inputs, "--output_dir", out,
    )  # fmt: skip
    assert (
        proc.returncode != 0 and "compile speeds up PyTorch, and this network runs on onnxruntime" in proc.stdout
    )
    assert not out.exists()


@pytest.mark.slow
def test_inference_onnx_missing_model(work, inputs):
    proc = run_config(
        _configs("inference.json", "inference_onnx.json"),
        "srcnn",
        "--onnx_path",
        work / "nope.onnx",
        "--input",
        inputs,
        "--output_dir",
        work / "out_nope",
    )
    assert proc.returncode != 0 and "ONNX model not found" in proc.stdout


# ------------------------------------------------------------------------------------------- training


TRAIN = train_files("srcnn")


def _train(run_dir: Path, epochs: int, config_file: str = TRAIN, limit: int = 4) -> subprocess.CompletedProcess:
    return _ok(
        run_config(
            config_file,
            "srcnn",
            "--train_limit",
            str(limit),
            "--val_limit",
            "2",
            "--max_epochs",
            str(epochs),
            "--patch_size",
            "32",
            "--run_dir",
            run_dir,
            "--ckpt_path",
            run_dir / "w.pt",
        )
    )


@needs_data(NIH)
@pytest.mark.slow
def test_train_resume_publish(tmp_path):
    run = tmp_path / "run"
    first = _train(run, 1)
    assert (run / "checkpoint_epoch=1.pt").is_file() and (run / "best.pt").is_file()
    manifest = json.loads((run / "weights.json").read_text())["w.pt"]
    assert manifest["sha256"] == hashlib.sha256((run / "w.pt").read_bytes()).hexdigest()
    assert manifest["epochs"] == 1 and manifest["scale"] == SCALE and "train.json" in manifest["command"]
    assert 5.0 < manifest["best_val_psnr"] < 60.0
    assert manifest["train_minutes"] > 0 and manifest["train_device"].startswith("CPU (")  # how long it took, where
    assert "Epoch[1] Complete" in first.stdout

    second = _train(run, 2)  # resumes from checkpoint_epoch=1.pt and trains only epoch 2
    assert f"Restored all variables from {run / 'checkpoint_epoch=1.pt'}" in second.stdout
    assert "Epoch[2] Complete" in second.stdout and "Epoch[1] Complete" not in second.stdout
    state = torch.load(run / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["max_epochs"] == 2 and state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]
    manifest2 = json.loads((run / "weights.json").read_text())["w.pt"]
    assert manifest2["epochs"] == 2 and manifest2["best_val_psnr"] >= manifest["best_val_psnr"]
    assert manifest2["train_minutes"] > manifest["train_minutes"]  # both runs' epochs
    assert manifest2["sha256"] == hashlib.sha256((run / "w.pt").read_bytes()).hexdigest()
    # the published file is a plain state dict that the inference entry point loads strictly
    net = load_weights(_net("srcnn"), run / "w.pt")
    assert not any(k.startswith("checkpointer") for k in torch.load(run / "w.pt", weights_only=True))
    with torch.no_grad():
        assert net(torch.rand(1, 1, 32, 32)).shape == (1, 1, 128, 128)


@pytest.mark.slow
@pytest.mark.parametrize(
    "files", [("inference.json", "train.json"), ("inference.json", "train.json", "methods/vdsr.json")]
)
def test_train_configs_without_the_methods_own_overlay_are_refused_and_nothing_written(tmp_path, files):
    """Without the overlay of the method named by --method (missing, or another method's, the old way to
    choose one) the method's settings would silently be the defaults or another's: one sentence naming the
    config list that trains it, before anything is written."""
    proc = run_config(_configs(*files), "srcnn", "--run_dir", tmp_path / "run", "--ckpt_path", tmp_path / "w.pt")
    assert proc.returncode != 0
    assert "do not hold the overlay of method 'srcnn'" in proc.stdout and TRAIN.replace("'", "") in proc.stdout.replace(
        "'", ""
    )
    assert not any(tmp_path.iterdir())


@needs_data(NIH)
@pytest.mark.slow
def test_evaluate_config_on_nih_test_split(tmp_path):
    out = tmp_path / "eval"
    _ok(
        run_config(
            _configs("inference.json", "evaluate.json"),
            "bicubic",
            "--limit",
            "2",
            "--output_dir",
            out,
            "--lpips",
            "false",
        )
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and summary["failures"] == []
    psnr_mean, _ = summary["summary"]["bicubic"]["psnr"]
    assert "lpips" not in summary["summary"]["bicubic"]  # "--lpips false" reached the config as text and means off
    assert 25.0 < psnr_mean < 50.0
    assert (out / "metrics.csv").read_text().count("\n") == 3  # header + 2 images
    assert list(out.glob("figure_*.png"))


@needs_data(DATA / "chest_ct")
@pytest.mark.slow
def test_evaluate_config_on_a_datalist_file_in_a_hu_window(tmp_path):
    """Chest CT slices (``monai-sr ct-slices`` lists them) scored through the evaluate config: the datalist
    file's ``test`` items, read in the HU window given on the command line (what the window changes is
    tested on evaluate() itself)."""
    from monai_sr_bundle.data.ct import write_slices

    slices = write_slices(DATA / "chest_ct" / "dcmqi_ct3slice", tmp_path / "slices")
    (tmp_path / "list.json").write_text(json.dumps({"test": [{"label": str(p)} for p in slices]}))
    out = tmp_path / "eval"
    args = ("--datalist_file", tmp_path / "list.json", "--intensity", "[-1000,400]", "--lpips", "false")
    _ok(run_config(_configs("inference.json", "evaluate.json"), "bicubic", "--output_dir", out, *args))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["failures"] == []
    assert 20.0 < summary["summary"]["bicubic"]["psnr"][0] < 50.0


@needs_data(NIH)
@pytest.mark.slow
def test_evaluate_config_scores_a_sites_own_folder_of_hr_images(tmp_path):
    """The external-site check: ``--input`` names a folder of one's own HR images (here two NIH test images
    copied in); a folder that does not exist is one sentence and nothing is written."""
    import shutil

    site = tmp_path / "site"
    site.mkdir()
    for item in nih_datalist("test", limit=2):
        shutil.copy(item["label"], site)
    out = tmp_path / "eval"
    args = ("--lpips", "false", "--output_dir", out)
    _ok(run_config(_configs("inference.json", "evaluate.json"), "bicubic", "--input", site, *args))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and summary["failures"] == []
    proc = run_config(
        _configs("inference.json", "evaluate.json"), "bicubic", "--input", tmp_path / "nope", *args[:2],
        "--output_dir", tmp_path / "eval2",
    )  # fmt: skip
    assert proc.returncode != 0 and "nope: no such file or folder; give HR images" in proc.stdout
    assert not (tmp_path / "eval2").exists()


def test_config_flag_reads_the_bundle_cli_text():
    assert monai_sr_bundle.flag(True) is True and monai_sr_bundle.flag("False") is False
    assert (
        monai_sr_bundle.flag("false") is False and monai_sr_bundle.flag("true") is True
    )  # fire keeps lowercase as text
    with pytest.raises(monai_sr_bundle.errors.InputError, match="not a true/false setting"):
        monai_sr_bundle.flag("flase")
