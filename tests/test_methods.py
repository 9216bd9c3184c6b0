"""The method registry and the contract every method meets. The contract tests are parametrised over the
registry, so a new method (an overlay plus a network file) gets them by existing: the last test shows it
with throwaway methods in a temporary overlay folder (``$MONAI_SR_METHODS``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import USER_PYTHON
from monai.bundle import ConfigParser

from monai_sr_bundle import card, methods, overlays, traits
from monai_sr_bundle.cli import main as cli
from monai_sr_bundle.constants import BUNDLE_ROOT, MODALITIES
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.request import check_sampling

REPO = Path(__file__).resolve().parents[1]
SCALE = 4
NAMES = methods.names()


def _image(shape=(1, 1, 20, 24), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, shape[-2] // 4, shape[-1] // 4), generator=g)
    x = torch.nn.functional.interpolate(coarse, size=shape[-2:], mode="bicubic", align_corners=False)
    return (x + 0.1 * torch.rand(shape, generator=g)).clamp(0, 1).expand(*shape).contiguous()


def _network(method: methods.Method) -> torch.nn.Module:
    """A fresh network whose every parameter takes part (some are zero at initialisation, e.g. VDSR's last
    layer, which would make the body invisible to the checks)."""
    torch.manual_seed(0)
    net = method.network().eval()
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().max() > 0:
                p.normal_(0, 0.01)
    return net


def _run(net: torch.nn.Module, method: methods.Method, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        if method.stochastic:
            return net(x, generator=torch.Generator().manual_seed(seed))
        return net(x)


# ----------------------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", NAMES)
def test_builds_and_describes_itself(name):
    method = methods.get(name, SCALE)
    assert isinstance(method.network(), torch.nn.Module)
    described = card.describe(method)
    # what the listing reads from the network's source is what the built network has
    assert described["name"] == name
    assert {k: described[k] for k in ("family", *traits.TRAITS)} == traits.built_traits(method.network())
    assert json.loads(json.dumps(described)) == described
    assert method.weights_name == f"{name}_cxr_x{SCALE}.pt" and method.halo >= 0


@pytest.mark.parametrize("name", NAMES)
def test_output_is_scale_times_input(name):
    for scale in (2, 4):
        method = methods.get(name, scale)
        x = _image((2, 1, 12, 20))
        assert tuple(_run(_network(method), method, x).shape) == (2, 1, 12 * scale, 20 * scale)


@pytest.mark.parametrize("name", NAMES)
def test_weights_round_trip_through_the_overlay(name, tmp_path):
    method = methods.get(name, SCALE)
    net, x, path = _network(method), _image(), tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    if not method.trainable:
        with pytest.raises(InputError, match=f"method '{name}' has no weights"):
            method.load(path)
        return
    loaded = method.load(path)
    assert not loaded.training
    torch.testing.assert_close(_run(loaded, method, x), _run(net, method, x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_tiles_agree_with_the_whole_image(name):
    """Deterministic methods: core-crop tiles with the network's declared halo equal one pass (tiles of 8 LR
    pixels and their halo: 3 x 4 of them where the halo is small). Stochastic ones: the same seed gives the same
    bytes, tiled or not (2 sampler steps: the seeding is the same at every step count)."""
    method = methods.get(name, SCALE)
    net, x = _network(method), _image((1, 1, 20, 28))
    small = max(2 * method.halo + 8, 16)
    with torch.no_grad():
        if method.stochastic:
            tiled = method.inferer(tile_size=small, seed=3, steps=2)
        else:
            whole = method.inferer(tile_size=64)(x, net)
            tiled = method.inferer(tile_size=small)
        first, second = tiled(x, net), tiled(x, net)
    assert tuple(first.shape) == (1, 1, 20 * SCALE, 28 * SCALE)
    assert torch.equal(first, second)
    if not method.stochastic:
        assert (first - whole).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_onnx_parity(name, tmp_path):
    method = methods.get(name, SCALE)
    if not method.exportable:
        pytest.skip(f"{name} declares itself not exportable as one ONNX graph")
    same = [n for n in NAMES[: NAMES.index(name)] if methods.get(n, SCALE).network_spec() == method.network_spec()]
    if same:  # e.g. a GAN method whose generator is another method's network: the same graph, exported there
        pytest.skip(f"{name}'s network is {same[0]}'s, whose export is checked")
    ort = pytest.importorskip("onnxruntime")
    net, x = _network(method), _image()
    # the graph as exported, without the exporter's optimisation passes (half the time here); the optimised
    # export that the bundle's onnx_export writes is checked in test_bundle.py
    torch.onnx.export(net, (x,), tmp_path / "m.onnx", input_names=["image"], output_names=["pred"], optimize=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"image": x.numpy()})
    assert np.abs(y - _run(net, method, x).numpy()).max() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_bad_weights_are_refused(name, tmp_path):
    method = methods.get(name, SCALE)
    if not method.trainable:
        pytest.skip(f"{name} takes no weights (tested in test_weights_round_trip_through_the_overlay)")
    garbage, alien = tmp_path / "garbage.pt", tmp_path / "alien.pt"
    garbage.write_bytes(b"not a checkpoint")
    torch.save({"conv.weight": torch.zeros(3, 3)}, alien)
    for path in (garbage, alien, tmp_path / "missing.pt"):
        with pytest.raises(InputError, match=re.escape(path.name)):
            method.load(path)


@pytest.mark.parametrize("name", NAMES)
def test_sampling_options(name, tmp_path):
    method = methods.get(name, SCALE)
    if method.stochastic:
        check_sampling(method, steps=10, seed=0)
        torch.save(method.network().state_dict(), tmp_path / "w.pt")
        predictor = method.predictor(tmp_path / "w.pt" if method.trainable else None, steps=7)
        assert predictor.sampling == {"steps": 7} and predictor.network.steps != 7  # a default of each call
        with pytest.raises(InputError, match="steps must be a whole number"):
            check_sampling(method, steps=0)
    else:
        for option in ({"steps": 10}, {"seed": 1}, {"samples": 4}):
            with pytest.raises(
                InputError, match=f"method '{name}' is deterministic and has no sampler: drop {next(iter(option))}"
            ):
                check_sampling(method, **option)


@pytest.mark.parametrize("name", NAMES)
def test_overlay_settings_are_keys_of_the_configs_that_train_it(name, tmp_path, monkeypatch):
    """Every key of an overlay is one the configs of its stages define or read (checked when the overlay is
    read), and a key nothing defines (a typo) is refused in one sentence naming the overlay and the key; so is
    an overlay that leaves a setting its stage reads unset (a GAN stage's ``adversarial_weight``)."""
    from monai_sr_bundle.stages import train_configs

    method = methods.get(name)
    files = {f for stage in method.stages for f in train_configs(name, stage) if f != str(method.overlay)}
    texts = [Path(f).read_text() for f in files | {train_configs("vdsr")[0]}]
    keys = set().union(*(json.loads(t) for t in texts), *(re.findall(r"@(\w+)", t) for t in texts))
    assert {k.split("#")[0] for k in method.config} <= keys | set(overlays.OVERLAY_KEYS)
    typo = {**method.config, "learning_rat": 0.1}
    unset = {k: v for k, v in method.config.items() if k != "adversarial_weight"}
    monkeypatch.setenv("MONAI_SR_METHODS", str(_overlay_dir(tmp_path, {f"typo_{name}": typo, f"unset_{name}": unset})))
    with pytest.raises(InputError, match=f"method 'typo_{name}': learning_rat in its overlay .* is no key of the"):
        methods.get(f"typo_{name}")
    if method.adversarial:
        with pytest.raises(InputError, match="'gan' stage .* reads adversarial_weight, which its overlay"):
            methods.get(f"unset_{name}")


# ----------------------------------------------------------------------------------------- the registry


def test_one_default_method():
    assert methods.default_name() in NAMES
    assert sum(card.describe(methods.get(n))["default"] for n in NAMES) == 1


def test_unknown_method_lists_the_others():
    with pytest.raises(InputError, match=r"unknown method 'espcn'; available: " + re.escape(", ".join(NAMES))):
        methods.get("espcn")
    with pytest.raises(InputError, match="unknown method"):
        methods.get("../" + NAMES[0])


def _overlay_dir(tmp_path: Path, overlays: dict) -> Path:
    folder = tmp_path / "overlays"
    folder.mkdir(exist_ok=True)
    for name, content in overlays.items():
        (folder / f"{name}.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


NET = {"_target_": "monai_sr_bundle.networks.SRCNN", "scale": "@scale"}
BROKEN = {
    "no_target": ({"network_def": {"scale": "@scale"}}, 'needs "network_def" with a "_target_"'),
    "bad_target": ({"network_def": {"_target_": "monai_sr_bundle.networks.NoSuchNet"}}, "cannot be built"),
    "bad_module": ({"network_def": {"_target_": "no_such_package.Net"}}, "cannot be built"),
    "not_module": ({"network_def": {"_target_": "collections.OrderedDict"}}, "not a torch nn.Module"),
    "old_format": (
        {"method": "x", "has_weights": True, "network_def": {"_target_": "torch.nn.Identity"}},
        "has_weights in its overlay",
    ),
    "not_json": ("{", "not readable JSON"),
    "stages_list": ({"network_def": NET, "stages": ["train.json"]}, "must map each stage, in training order"),
    "stage_no_files": ({"network_def": NET, "stages": {"train": []}}, "stage 'train' must list its config files"),
    "stage_missing_file": (
        {"network_def": NET, "stages": {"distil": ["train.json", "train_distil.json"]}},
        "stage 'distil' names train_distil.json, not found",
    ),
}


def test_a_stage_the_method_does_not_declare_is_refused_with_the_ones_it_has():
    from monai_sr_bundle.stages import check_stage, stage_configs

    ldm = methods.get("ldm")
    assert list(ldm.stages) == ["autoencoder", "diffusion"]
    assert stage_configs(ldm) == [
        "configs/inference.json",
        "configs/train.json",
        "configs/methods/ldm.json",
        "configs/train_diffusion.json",
        "configs/train_latent.json",
    ]
    with pytest.raises(InputError) as e:
        check_stage(ldm, "gan")
    assert str(e.value).startswith("method 'ldm' has no 'gan' stage") and len(str(e.value).splitlines()) == 1
    assert (
        "autoencoder: --config_file \"['configs/inference.json','configs/train.json','configs/methods/ldm.json',"
        "'configs/train_autoencoder" in str(e.value)
    )
    assert methods.get("vdsr").stages == {"train": ["train.json"]} and methods.get("bicubic").stages == {}


def test_config_prints_a_stage_merged_and_its_plain_references_resolved(capsys):
    from monai_sr_bundle.cli import main as cli

    assert cli(["config", "runet_aware", "--stage", "train", "--scale", "2"]) in (None, 0)
    config = json.loads(capsys.readouterr().out)
    assert config["learning_rate"] == 1e-4  # the overlay's, over train.json's
    assert config["degradation"] == "continuum_train" and config["network_def"]["scale"] == 2
    assert config["network"].startswith("$@sr_method")  # code stays as written
    assert cli(["config", "srcnn"]) in (None, 0)
    assert "optimizer" not in json.loads(capsys.readouterr().out)  # inference: no training keys
    assert cli(["config", "srcnn", "--stage", "gan"]) == 2
    assert "method 'srcnn' has no 'gan' stage" in capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_overlays_name_the_method(case, tmp_path, monkeypatch):
    overlay, message = BROKEN[case]
    monkeypatch.setenv("MONAI_SR_METHODS", str(_overlay_dir(tmp_path, {case: overlay})))
    with pytest.raises(InputError, match=f"method '{case}'.*{re.escape(message)}"):
        methods.get(case).network()
    # the CLI says the same in one line and writes nothing
    (tmp_path / "in.png").write_bytes(b"")
    out = tmp_path / "out"
    assert cli(["sr", str(tmp_path / "in.png"), "-o", str(out), "-m", case]) == 2
    assert not out.exists()


def test_declared_traits_follow_re_exports_and_bases_and_give_up_outside_the_package():
    assert traits.declared_traits("monai_sr_bundle.networks.ADSR") == {
        "family": "adsr", "trainable": True, "stochastic": True, "exportable": False, "noise_aware": False
    }  # fmt: skip  # re-exported by networks/__init__.py, stochastic and exportable inherited from SR3
    assert traits.declared_traits("monai_sr_bundle.networks.bicubic.Bicubic")["trainable"] is False
    assert traits.declared_traits("monai_sr_bundle.networks.LRUNet")["noise_aware"] is True
    for target in ("torch.nn.Identity", "monai_sr_bundle.networks.NoSuchNet", "monai_sr_bundle.nowhere.Net"):
        assert traits.declared_traits(target) is None  # then the network is built to describe it


def test_listing_methods_and_help_import_neither_torch_nor_monai():
    """What keeps `monai-sr methods` and `--help` under a second (the Slicer module lists methods at start)."""
    code = (
        "import contextlib, io, sys\nfrom monai_sr_bundle.cli import main\nmain(['methods', '--json'])\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n    main(['sr', '--help'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai', 'numpy'}), file=sys.stderr)"
    )
    done = subprocess.run([USER_PYTHON, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == card.describe_all() and done.stderr.strip() == "[]"


@pytest.mark.slow
def test_a_users_install_imports_every_module_and_loads_every_method():
    """A user's install (``USER_PYTHON``; under ``make test``, monai-sr[federated,zoo] alone) imports every module
    of the package and loads every shipped method with its weights: a dependency that only the test or MONAI
    Label packages bring in fails here (einops did: MONAI's attention blocks import it when the diffusion
    U-Nets are built)."""
    code = (
        "import importlib, pkgutil, monai_sr_bundle\nfrom monai_sr_bundle import methods\n"
        "for module in pkgutil.walk_packages(monai_sr_bundle.__path__, 'monai_sr_bundle.'):\n"
        "    importlib.import_module(module.name)\n"
        "for name in methods.names():\n    methods.get(name).load()\nprint(len(methods.names()))"
    )
    done = subprocess.run([USER_PYTHON, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == [str(len(methods.names()))], done.stderr[-3000:]


def test_a_name_defined_twice_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "MONAI_SR_METHODS", str(_overlay_dir(tmp_path, {NAMES[0]: {"network_def": {"_target_": "torch.nn.Identity"}}}))
    )
    with pytest.raises(InputError, match=f"method '{NAMES[0]}' is defined twice"):
        methods.names()


def test_no_weights_for_a_method_without_parameters_or_without_training(tmp_path, monkeypatch):
    interpolation = next(n for n in NAMES if not methods.get(n).trainable)
    with pytest.raises(InputError, match=f"method '{interpolation}' has no weights"):
        methods.get(interpolation).load(tmp_path / "w.pt")
    with pytest.raises(InputError, match=f"method '{interpolation}' has nothing to train"):
        methods.get(interpolation).trainable_network()
    trainable = methods.trainable_names()[0]
    with pytest.raises(InputError, match=f"method '{trainable}' has no cxr x3 weights"):
        methods.get(trainable, 3).load()


def test_cli_lists_the_registry(capsys):
    assert cli(["methods", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == card.describe_all()
    assert cli(["methods"]) == 0
    assert capsys.readouterr().out.strip() == card.markdown_table()
    assert cli(["methods", "--networks"]) == 0
    assert capsys.readouterr().out.strip() == card.networks_table()


def test_cli_refuses_sampling_options_for_deterministic_methods(tmp_path, capsys):
    name = methods.default_name()
    (tmp_path / "in.png").write_bytes(b"")
    assert cli(["sr", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--seed", "1"]) == 2
    assert f"method '{name}' is deterministic and has no sampler: drop seed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_inference_reads_images_as_the_weights_were_trained(tmp_path):
    """CT weights trained in a HU window are read in it by default (``models/weights.json``'s ``intensity``);
    weights without a record, and methods without weights, read as their modality says (``MODALITIES``)."""
    overlay = overlays.overlays()["srcnn"]
    (tmp_path / "models").mkdir()
    record = {"srcnn_ct_x4.pt": {"intensity": [-1000, 400]}, "srcnn_cxr_x4.pt": {"command": "c"}}
    (tmp_path / "models" / "weights.json").write_text(json.dumps(record))
    assert methods.Method("srcnn", overlay, 4, "ct", tmp_path).intensity == [-1000, 400]
    assert methods.Method("srcnn", overlay, 4, "cxr", tmp_path).intensity == "minmax"
    assert methods.Method("srcnn", overlay, 2, "ct", tmp_path).intensity == MODALITIES["ct"] == (-1000, 400)
    cxr = methods.Method("srcnn", overlay, 4, "cxr", tmp_path)
    assert cxr.intensity_of(tmp_path / "models" / "srcnn_ct_x4.pt") == [-1000, 400]  # what the file's record says
    assert cxr.intensity_of(tmp_path / "elsewhere.pt") == "minmax"  # no manifest beside it: the modality's
    assert methods.get("bicubic", 4, "ct").predictor().intensity == (-1000, 400)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "inference.json"))
    parser.update({"bundle_root": str(tmp_path), "method": "srcnn", "modality": "ct"})
    assert parser.get_parsed_content("intensity") == [-1000, 400]


def test_model_card_lists_the_registry():
    text = (BUNDLE_ROOT / "docs" / "README.md").read_text()
    assert card.markdown_table() in text, "regenerate the table with: monai-sr methods"
    assert card.networks_table() in text, "regenerate the table with: monai-sr methods --networks"


# ----------------------------------------------------------------------------------------- a new method

DUMMY_NETWORKS = '''
import torch
from torch import nn
from torch.nn import functional as F

from monai_sr_bundle.errors import InputError


class TinySR(nn.Module):
    """A 3x3 convolution at LR, then nearest upsampling: one LR pixel of context."""

    def __init__(self, scale=4):
        super().__init__()
        self.scale, self.halo = scale, 1
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=self.scale, mode="nearest")


class NoisySR(nn.Module):
    """A stand-in sampler: nearest upsampling plus noise drawn from the generator it is given."""

    stochastic, exportable = True, False

    def __init__(self, scale=4):
        super().__init__()
        self.scale, self.steps = scale, 10
        self.gain = nn.Parameter(torch.ones(1))

    def make_sampler(self, sampler=None, steps=None):
        if sampler not in (None, "ddim") or not 1 <= (steps or self.steps) <= 10:
            raise InputError("only ddim, at most 10 steps")

    def forward(self, x, generator=None, sampler=None, steps=None, progress=False):
        self.make_sampler(sampler, steps)
        up = F.interpolate(x, scale_factor=self.scale, mode="nearest") * self.gain
        return up + 0.01 * torch.randn(up.shape, generator=generator)
'''


@pytest.mark.slow
def test_a_new_method_gets_the_contract_tests(tmp_path, monkeypatch, capsys):
    """An overlay and a network file, outside the package: the registry lists the methods and this file's
    contract tests run on them (and pass). The contract tests run in a pytest process of their own, which
    collects them for the new registry; the listing runs here."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "dummy_networks.py").write_text(DUMMY_NETWORKS)
    overlays = _overlay_dir(
        tmp_path,
        {
            "dummy_tiny": {
                "network_def": {"_target_": "dummy_networks.TinySR", "scale": "@scale"},
                "stages": {"train": ["train.json"]},
                "learning_rate": 0.001,
            },
            "dummy_noisy": {"network_def": {"_target_": "dummy_networks.NoisySR", "scale": "@scale"}},
        },
    )
    env = dict(
        os.environ,
        MONAI_SR_METHODS=str(overlays),
        PYTHONPATH=os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "dummy_", str(Path(__file__))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    contract = [
        f
        for n, f in globals().items()
        if n.startswith("test_")
        and any(m.name == "parametrize" and m.args[0] == "name" for m in getattr(f, "pytestmark", []))
    ]
    # every contract test on both methods; the one skip: the stochastic method's ONNX export, which it declines
    assert re.search(rf"\b{2 * len(contract) - 1} passed, 1 skipped\b", done.stdout), done.stdout[-2000:]
    monkeypatch.setenv("MONAI_SR_METHODS", str(overlays))
    monkeypatch.syspath_prepend(str(package))
    capsys.readouterr()
    assert cli(["methods", "--json"]) == 0
    described = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert described["dummy_noisy"]["stochastic"] and described["dummy_noisy"]["family"] == "dummy_networks"
    assert described["dummy_tiny"]["trainable"] and not described["dummy_tiny"]["weights_available"]
