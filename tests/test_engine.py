"""The inference engine behind the Predictor (monai_sr_bundle/engine.py): OpenVINO and ONNX Runtime reproduce
PyTorch on real radiographs through every surface, the exported graph is cached by what made it and rebuilt
when it is bad, and a machine without an engine falls back to PyTorch. (The suite runs PyTorch elsewhere:
``$MONAI_SR_RUNTIME`` is ``torch`` in tests/conftest.py; these tests name the runtime.)"""

from __future__ import annotations

import json
import logging
import multiprocessing

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data
from PIL import Image

from monai_sr_bundle import engine, methods
from monai_sr_bundle.cli import main as cli
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.errors import InputError

NIH = needs_data(DATA / "nih_cxr14")
ENGINES = [r for r in engine.CPU_ENGINES if engine.installed(r)]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """An empty cache per test, so what a test exports is what it checks."""
    monkeypatch.setenv(engine.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _lr(tmp_path, size: int = 96):
    """An NIH test radiograph shrunk to ``size`` px (an odd crop, so tiles and padding have edges), as a file
    and as the loaded image."""
    with Image.open(nih_datalist("test")[0]["label"]) as im:
        small = im.convert("L").resize((size, size), Image.LANCZOS).crop((0, 0, size - 3, size - 7))
    path = tmp_path / "lr.png"
    small.save(path)
    return path, read_image(path, "minmax")


def _pair(tmp_path, size: int = 92):
    """An NIH test radiograph as HR (``size`` px, not a multiple of the tiles) and its antialiased x4 LR, loaded
    as a file is."""
    with Image.open(nih_datalist("test")[0]["label"]) as im:
        hr = im.convert("L").resize((4 * size, 4 * size), Image.LANCZOS)
    path = tmp_path / "lr.png"
    hr.resize((size, size), Image.BICUBIC, reducing_gap=None).save(path)
    return torch.from_numpy(np.asarray(hr, np.float32) / 255)[None], read_image(path, "minmax")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@NIH
@pytest.mark.parametrize(
    "name, runtime", [("runet_real", r) for r in ENGINES] + [("runet_aware", r) for r in ENGINES[:1]]
)
def test_the_engine_reproduces_pytorch_on_a_real_radiograph_tile_by_tile(tmp_path, name, runtime):
    """fp32: within 1e-3 of PyTorch, on a whole radiograph and with tiles smaller than it (the halo rules
    unchanged); OpenVINO bf16 where the CPU has it: within 0.05 dB of PyTorch's PSNR against the fp32 result."""
    method = methods.get(name)
    hr, image = _pair(tmp_path)
    reference = method.predictor(runtime="torch")(image)
    for tile in (None, 40):
        served = method.predictor(runtime=runtime, precision="fp32", tile_size=tile)
        assert served.runtime == runtime and type(served.network).__name__ == "EngineNetwork"
        assert float((served(image) - reference).abs().max()) < 1e-3
    if runtime == "openvino" and engine.cpu_has_bf16():
        fast = method.predictor(runtime=runtime)  # auto: bf16 where benchmarks/engines.py measured it within 0.05 dB
        assert fast.precision == ("bf16" if method.config.get("engine_bf16") else "fp32")
        assert abs(_psnr(fast(image), hr) - _psnr(reference, hr)) < 0.05


@NIH
@pytest.mark.parametrize("name", ["sr3", "ldm"])
def test_a_samplers_parts_on_the_engine_reproduce_pytorch_at_the_same_seed(tmp_path, own_cache, caplog, name):
    """The denoiser (and ldm's decoder) exported once to the cache and run by every engine inside the method's own
    sampler loop: fp32 within 1e-3 of PyTorch at the same seed, the next load reuses the graphs, a worker process
    (a pickled predictor) opens its own; OpenVINO bf16 stays close."""
    import pickle

    method = methods.get(name)
    _, image = _lr(tmp_path, 40)
    reference = method.predictor(runtime="torch", seed=5, steps=4)(image)
    for runtime in ENGINES:
        served = method.predictor(runtime=runtime, precision="fp32", seed=5, steps=4)
        assert type(served.network.denoiser).__name__ == "EnginePart" and served.runtime == runtime
        assert float((served(image) - reference).abs().max()) < 1e-3
    parts = sorted(p.name.rsplit("_", 1)[1] for p in own_cache.glob("*.onnx"))
    assert parts == (["decoder.onnx", "denoiser.onnx"] if method.latent else ["denoiser.onnx"])
    assert not [p for p in own_cache.iterdir() if ".tmp" in p.name]  # each graph one file, renamed into place
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_sr_bundle.engine"):
        again = pickle.loads(pickle.dumps(method.predictor(runtime=ENGINES[0], precision="fp32", seed=5, steps=4)))
    assert not [r for r in caplog.records if "exporting" in r.getMessage()]
    assert float((again(image) - reference).abs().max()) < 1e-3
    if "openvino" in ENGINES and engine.cpu_has_bf16():
        fast = method.predictor(runtime="openvino", precision="bf16", seed=5, steps=4)
        assert _psnr(fast(image), reference) > 35  # bf16's steps: close to fp32's sample


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_weights"])
def test_a_bad_cache_file_is_rebuilt_with_one_warning(tmp_path, own_cache, caplog, damage):
    """Whatever is wrong with a cached graph (not ONNX, cut short, another network's graph under this name),
    it is exported again with one warning and the answer is right."""
    runtime = ENGINES[0]
    method = methods.get("srcnn")
    first = method.predictor(runtime=runtime)
    (path,) = own_cache.glob("*.onnx")
    good = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a graph" * 100)
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:
        other = methods.get("srcnn").network()
        weights = tmp_path / "other.pt"
        torch.save(other.state_dict(), weights)
        methods.get("srcnn").predictor(weights, runtime=runtime)
        (other_path,) = set(own_cache.glob("*.onnx")) - {path}
        path.write_bytes(other_path.read_bytes())
    x = torch.rand(1, 19, 23)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_sr_bundle.engine"):
        again = method.predictor(runtime=runtime)
    assert len([r for r in caplog.records if "exporting it again" in r.getMessage()]) == 1
    assert float((again(x) - first(x)).abs().max()) < 1e-5
    assert path.read_bytes() != b"not a graph" * 100


def test_new_weights_get_a_new_graph_and_the_same_weights_reuse_it(tmp_path, own_cache, caplog):
    runtime = ENGINES[0]
    method = methods.get("srcnn")
    method.predictor(runtime=runtime)
    weights = tmp_path / "w.pt"
    torch.save(method.network().state_dict(), weights)
    with caplog.at_level(logging.INFO, logger="monai_sr_bundle.engine"):
        method.predictor(weights, runtime=runtime)
        assert len(list(own_cache.glob("*.onnx"))) == 2
        caplog.clear()
        method.predictor(weights, runtime=runtime)
    assert not [r for r in caplog.records if "exporting" in r.getMessage()]
    assert len(list(own_cache.glob("*.onnx"))) == 2


def _fill(cache: str, runtime: str) -> None:
    import os

    os.environ[engine.CACHE_ENV] = cache
    methods.get("srcnn").predictor(runtime=runtime)


def test_two_processes_filling_the_cache_at_once_leave_one_good_file(own_cache):
    runtime = ENGINES[0]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_fill, args=(str(own_cache), runtime)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(list(own_cache.glob("*.onnx"))) == 1 and not list(own_cache.glob("*.tmp*"))
    x = torch.rand(1, 17, 21)
    assert (
        float(
            (
                methods.get("srcnn").predictor(runtime=runtime, precision="fp32")(x)
                - methods.get("srcnn").predictor(runtime="torch")(x)
            )
            .abs()
            .max()
        )
        < 1e-3
    )


def test_without_an_engine_auto_runs_pytorch_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(engine, "installed", lambda runtime: runtime == "torch")
    monkeypatch.delenv(engine.RUNTIME_ENV)
    with caplog.at_level(logging.WARNING, logger="monai_sr_bundle.engine"):
        predictor = methods.get("srcnn").predictor()
    assert predictor.runtime == "torch" and predictor.precision == "fp32"
    assert [r.getMessage() for r in caplog.records] == [
        "no inference engine installed (pip install openvino): running PyTorch eager"
    ]
    with pytest.raises(InputError, match="not installed here"):
        methods.get("srcnn").predictor(runtime="openvino")


def test_auto_picks_the_fastest_engine_installed_and_pytorch_where_none_serves(monkeypatch):
    monkeypatch.delenv(engine.RUNTIME_ENV)
    assert engine.resolve(methods.get("srcnn"), "auto", "cpu")[0] == ENGINES[0]
    assert engine.resolve(methods.get("bicubic"), "auto", "cpu") == ("torch", "fp32")
    bf16 = "openvino" in ENGINES and engine.cpu_has_bf16()
    sampler = ("openvino", "bf16") if bf16 else ("torch", "fp32")  # a sampler's steps pay in bf16 only
    assert engine.resolve(methods.get("sr3"), "auto", "cpu") == sampler
    assert engine.resolve(methods.get("sr3"), "auto", "cpu", "fp32") == ("torch", "fp32")
    monkeypatch.setitem(methods.get("sr3").config, "engine_bf16", False)  # where its quality would not hold
    assert engine.resolve(methods.get("sr3"), "auto", "cpu") == ("torch", "fp32")
    monkeypatch.setenv(engine.RUNTIME_ENV, "torch")
    assert engine.resolve(methods.get("srcnn"), "auto", "cpu")[0] == "torch"
    monkeypatch.setenv(engine.RUNTIME_ENV, ENGINES[0])  # a deployment's default: what it cannot serve runs PyTorch
    assert engine.resolve(methods.get("bicubic"), "auto", "cpu")[0] == "torch"
    assert engine.resolve(methods.get("sr3"), "auto", "cpu")[0] == ENGINES[0]
    assert engine.resolve(methods.get("srcnn"), "auto", "cpu")[0] == ENGINES[0]


def test_an_engine_takes_an_image_up_to_its_whole_size_in_one_call_and_larger_ones_in_tiles():
    runet_real = methods.get("runet_real")
    assert engine.whole_size(runet_real, ENGINES[0]) == engine.WHOLE_SIZE > runet_real.tile_size
    assert engine.whole_size(runet_real, "torch") == engine.whole_size(methods.get("sr3"), ENGINES[0]) == 0
    calls = []

    def network(x):
        calls.append(x.shape)
        return x.repeat_interleave(4, -1).repeat_interleave(4, -2)

    for side, windows in ((engine.WHOLE_SIZE, 1), (engine.WHOLE_SIZE + 1, 3)):  # 3 tiles of 256 with halos
        runet_real.inferer(whole_size=engine.WHOLE_SIZE)(torch.zeros(1, 1, side, 40), network)
        assert len(calls) == windows, (side, calls)
        calls.clear()


@pytest.mark.parametrize(
    "runtime, precision, name, match",
    [
        ("tensorflow", "auto", "srcnn", "unknown runtime 'tensorflow'"),
        ("openvino", "auto", "bicubic", "no network to run"),
        ("onnxruntime", "bf16", "srcnn", "ONNX Runtime computes in fp32"),
        ("openvino", "fp16", "srcnn", "fp16 runs on a GPU only"),
        ("openvino", "int4", "srcnn", "unknown precision 'int4'"),
    ],
)
def test_a_request_no_runtime_can_serve_is_refused_in_one_sentence(runtime, precision, name, match):
    with pytest.raises(InputError, match=match):
        methods.get(name).predictor(runtime=runtime, precision=precision)


def test_a_cache_that_cannot_be_written_is_one_sentence(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(engine.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(InputError, match="cannot be written"):
        methods.get("srcnn").predictor(runtime=ENGINES[0])


def test_compile_is_refused_on_an_engine():
    with pytest.raises(InputError, match="compile speeds up PyTorch"):
        methods.get("srcnn").predictor(runtime=ENGINES[0], compile=True)


@NIH
def test_the_cli_the_worker_and_a_worker_pool_serve_the_engine_as_pytorch(tmp_path):
    """``monai-sr sr --runtime`` (one process and a pool of two workers, which each open the graph from its
    file), and the Slicer worker, whose reply names the engine for the module's status line."""
    from monai_sr_bundle.worker import Worker

    src, _ = _lr(tmp_path, 64)
    copies = [tmp_path / f"lr{i}.png" for i in range(2)]
    for c in copies:
        c.write_bytes(src.read_bytes())
    engine_options = ["-m", "srcnn", "--runtime", ENGINES[0], "--precision", "fp32"]
    assert cli(["sr", str(src), "-o", str(tmp_path / "torch"), "-m", "srcnn", "--runtime", "torch"]) == 0
    assert cli(["sr", str(src), "-o", str(tmp_path / "engine"), *engine_options]) == 0
    assert cli(["sr", *map(str, copies), "-o", str(tmp_path / "pool"), *engine_options, "--workers", "2"]) == 0
    request = {"input": str(src), "method": "srcnn", "runtime": ENGINES[0], "precision": "fp32"}
    reply = Worker().handle(json.dumps({**request, "output": str(tmp_path / "worker")}))
    assert reply["runtime"] == ENGINES[0] and reply["precision"] == "fp32"
    ref = np.asarray(Image.open(tmp_path / "torch" / "lr_sr.png"), np.int16)
    for out in ("engine/lr_sr.png", "pool/lr0_sr.png", "pool/lr1_sr.png", "worker/lr_sr.png"):
        assert np.abs(np.asarray(Image.open(tmp_path / out), np.int16) - ref).max() <= 1, out
    for bad, match in (({"runtime": "gpu"}, "unknown runtime"), ({"precision": "fp8"}, "unknown precision")):
        with pytest.raises(InputError, match=match):
            Worker().handle(json.dumps({**request, **bad, "output": str(tmp_path / "x")}))
    assert not (tmp_path / "x").exists()


@NIH
def test_the_bundles_openvino_config_runs_the_engine(tmp_path):
    """``python -m monai.bundle run`` with ``configs/inference_openvino.json`` over inference.json, on the graph
    an earlier process cached (a session's first request reaches the network without exporting)."""
    from test_bundle import _ok, run_config

    if "openvino" not in ENGINES:
        pytest.skip("OpenVINO is not installed")
    src, _ = _lr(tmp_path, 64)
    methods.get("srcnn").predictor(runtime="openvino")
    proc = _ok(
        run_config(
            "['configs/inference.json','configs/inference_openvino.json']",
            "srcnn",
            "--dataset_dir",
            str(src),
            "--output_dir",
            str(tmp_path / "out"),
            "--precision",
            "fp32",
        )
    )
    assert "srcnn runs on openvino in fp32" in proc.stdout and "exporting" not in proc.stdout
    assert (tmp_path / "out" / "lr_sr.png").is_file()
