"""GAN training (``configs/train_gan.json``): the losses of the game, the SRGAN discriminator, MONAI's
AdversarialTrainer made to treat the HR target as the real sample, and a tiny GAN registered as a throwaway
method (``$MONAI_SR_METHODS``) trained, resumed and published through the real bundle command; a loss that
turns NaN stops training with one sentence and keeps the last good checkpoint."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, TINY_GAN, needs_data
from monai.engines import SupervisedTrainer
from monai.utils import AdversarialKeys
from test_bundle import _configs, _ok, run_config, train_files

from monai_sr_bundle import card, methods
from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.losses import AdversarialLoss, PixelLoss, SRBatch, WeightedSumLoss
from monai_sr_bundle.networks import SRResNet
from monai_sr_bundle.networks.discriminator import SRGANDiscriminator
from monai_sr_bundle.stages import train_configs
from monai_sr_bundle.training.gan import SRAdversarialTrainer
from monai_sr_bundle.training.loop import SRPrepareBatch, attach_resume, stop_on_nan

GAN = _configs("inference.json", "train.json", "train_gan.json")
TRAIN = _configs("inference.json", "train.json")


def _checkpoint(trainer) -> dict:
    """What the train config's ``checkpoint`` names: the networks and their optimizers."""
    parts = ("network", "optimizer", "discriminator", "d_optimizer")
    return {p: getattr(trainer, p) for p in parts if hasattr(trainer, p)}


# ------------------------------------------------------------------------------------------------ losses


def test_standard_game_is_srgans():
    real, fake = torch.tensor([[2.0], [0.5]]), torch.tensor([[-1.0], [0.3]])
    loss = AdversarialLoss(weight=1e-3)
    assert torch.allclose(loss.generator(fake), 1e-3 * F.softplus(-fake).mean())  # -log sigmoid(D(G(lr)))
    assert torch.allclose(loss.discriminator(real, fake), (F.softplus(-real).mean() + F.softplus(fake).mean()) / 2)


def test_relativistic_game_is_esrgans():
    real, fake = torch.tensor([[2.0], [0.5]]), torch.tensor([[-1.0], [0.3]])
    loss = AdversarialLoss(weight=5e-3, relativistic=True)
    r, f = real - fake.mean(), fake - real.mean()  # relativistic average logits
    d = (F.softplus(-r).mean() + F.softplus(f).mean()) / 2
    g = 5e-3 * (F.softplus(r).mean() + F.softplus(-f).mean()) / 2  # the mirror image, weighted
    assert torch.allclose(loss.discriminator(real, fake), d)
    assert torch.allclose(loss.generator(fake, real), g)
    with pytest.raises(ValueError, match="real images"):
        loss.generator(fake)
    with pytest.raises(InputError, match=">= 0"):
        AdversarialLoss(weight=-1)


def _never_built(**kwargs):
    raise AssertionError("a block with weight 0 must not be built")


def test_weighted_sum_of_loss_blocks_skips_switched_off_terms():
    pred, target = torch.zeros(1, 1, 4, 4), SRBatch(hr=torch.ones(1, 1, 4, 4))
    blocks = {"pixel": partial(PixelLoss, weight=0.5), "mse": partial(PixelLoss, distance="mse", weight=2.0)}
    loss = WeightedSumLoss(blocks)
    assert loss(pred, target).item() == pytest.approx(2.5) and list(loss.terms) == ["pixel", "mse"]
    only = WeightedSumLoss({**blocks, "mse": None, "vgg": partial(_never_built, weight=0.0)})
    assert list(only.terms) == ["pixel"] and only(pred, target).item() == pytest.approx(0.5)
    assert only.record == {"pixel": {"loss": "PixelLoss", "weight": 0.5}}


@pytest.mark.parametrize(
    "block, message",
    [
        (PixelLoss, 'must be a loss class with "_mode_": "callable" and a "weight"'),
        (partial(PixelLoss, distance="l1"), 'and a "weight"'),
        (partial(PixelLoss, weight=-1.0), "weight must be a number >= 0, got -1.0"),
        (partial(PixelLoss, weight="1"), "weight must be a number >= 0, got '1'"),
        (partial(PixelLoss, weight=1.0, box_wieght=2.0), "cannot be built (PixelLoss.__init__() got an unexpected"),
        (partial(PixelLoss, weight=1.0, distance="l3"), "cannot be built (the pixel distance must be one of l1, mse"),
        (partial(dict, weight=1.0), "built a dict, not a torch module"),
        (partial(PixelLoss, weight=0.0), "every loss block in configs/x.json has weight 0: nothing would be trained"),
    ],
)
def test_a_bad_loss_block_is_one_sentence_naming_where_and_which(block, message):
    with pytest.raises(InputError) as e:
        WeightedSumLoss({"pixel": block}, source="configs/x.json")
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1
    if "nothing would" not in message:
        assert str(e.value).startswith("the loss block losses#pixel in configs/x.json")


# ---------------------------------------------------------------------------------------- discriminator


def test_discriminator_is_the_papers_at_96_px():
    net = SRGANDiscriminator(in_channels=3)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert net.features(torch.rand(1, 3, 96, 96)).shape[-2:] == (6, 6)  # the map the paper flattens
    # then the pool is the identity and the dense layer sees the paper's 6 x 6 x 512 inputs
    assert net.head[2].in_features == 512 * 6 * 6 and net.head[2].out_features == 1024
    with torch.no_grad():
        assert SRGANDiscriminator(channels=4, pool=2, dense=8)(torch.rand(3, 1, 40, 56)).shape == (3, 1)


def test_a_discriminator_checkpoint_is_refused_as_generator_weights(tmp_path, tiny_gan):
    path = tmp_path / "d.pt"
    torch.save(tiny_gan.discriminator().state_dict(), path)
    with pytest.raises(InputError, match="do not fit"):
        tiny_gan.load(path)


# -------------------------------------------------------------------------------------------- trainer


def _batches(n: int = 2):
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(n, 2, 1, 32, 32, generator=g)
    mask = torch.zeros(n, 2, 1, 32, 32)
    return [{"image": F.avg_pool2d(h, 4), "label": h, "box_mask": m} for h, m in zip(hr, mask)]


def _gan_trainer(relativistic: bool, max_epochs: int = 1) -> SRAdversarialTrainer:
    torch.manual_seed(0)
    g, d = SRResNet(4, channels=8, blocks=1, residual=True), SRGANDiscriminator(channels=4, pool=2, dense=8)
    return SRAdversarialTrainer(
        adversarial_loss=AdversarialLoss(1e-3, relativistic),
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=_batches(),
        g_network=g,
        g_optimizer=torch.optim.Adam(g.parameters(), 1e-3),
        recon_loss_function=PixelLoss(),
        prepare_batch=SRPrepareBatch(),
        d_network=d,
        d_optimizer=torch.optim.Adam(d.parameters(), 1e-3),
    )


@pytest.mark.parametrize("relativistic", [False, True])
def test_the_real_sample_is_the_hr_target(relativistic):
    trainer = _gan_trainer(relativistic)
    seen = []
    d_forward = trainer.state.d_network.forward
    trainer.state.d_network.forward = lambda x: seen.append(x.detach().clone()) or d_forward(x)
    before = [p.detach().clone() for p in (*trainer.network.parameters(), *trainer.discriminator.parameters())]
    trainer.run()
    out = trainer.state.output[0] if isinstance(trainer.state.output, list) else trainer.state.output
    label = _batches()[-1]["label"]
    assert torch.equal(out[AdversarialKeys.REALS], label)  # the named batch's HR target
    # the discriminator saw HR-sized images only, the reals among them (not the 8 x 8 LR input, as MONAI's
    # trainer would give it); the relativistic generator step also asks it about the reals
    assert all(x.shape[-2:] == (32, 32) for x in seen)
    reals = [b["label"] for b in _batches()]
    assert sum(any(torch.equal(x, r) for r in reals) for x in seen) == (4 if relativistic else 2)  # 2 iterations
    loss = out["loss"]
    assert torch.isclose(loss, out[AdversarialKeys.RECONSTRUCTION_LOSS] + out[AdversarialKeys.GENERATOR_LOSS])
    after = [*trainer.network.parameters(), *trainer.discriminator.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after) if a.dim() > 1)  # both networks trained
    assert trainer.network is trainer.state.g_network and trainer.optimizer is trainer.state.g_optimizer


def test_gan_checkpoints_are_state_dicts_that_resume(tmp_path):
    trainer = _gan_trainer(False)
    attach_resume(trainer, tmp_path, None, _checkpoint(trainer))
    trainer.run()
    state = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)  # no pickled modules
    assert {"network", "optimizer", "discriminator", "d_optimizer", "trainer"} <= set(state)
    resumed = _gan_trainer(False, max_epochs=2)
    attach_resume(resumed, tmp_path, None, _checkpoint(resumed))
    resumed.run()
    assert resumed.state.epoch == 2 and resumed.state.iteration == 4
    assert (tmp_path / "checkpoint_epoch=2.pt").is_file()


def test_a_checkpoint_of_another_network_is_refused_in_one_sentence(tmp_path):
    """A run folder left by an earlier network (an overlay changed since) is not resumed into this one."""
    data = [{"image": b["label"], "label": b["label"]} for b in _batches()]

    def trainer(kernel: int) -> SupervisedTrainer:
        net = torch.nn.Conv2d(1, 1, kernel, padding=kernel // 2)
        return SupervisedTrainer("cpu", 1, data, net, torch.optim.SGD(net.parameters(), 0.1), F.l1_loss)

    first = trainer(3)
    attach_resume(first, tmp_path, None, _checkpoint(first))
    first.run()
    with pytest.raises(
        InputError, match=r"checkpoint_epoch=1\.pt: .*another network .*differ in name or shape: 1\).*--resume false"
    ):
        attach_resume(other := trainer(5), tmp_path, None, _checkpoint(other))
    attach_resume(other, tmp_path, None, _checkpoint(other), resume=False)  # starting afresh is allowed


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    calls = []

    def loss(pred, target):  # finite for the first epoch (2 iterations), then NaN
        calls.append(1)
        return F.l1_loss(pred, target) * (float("nan") if len(calls) > 3 else 1.0)

    data = [{"image": b["label"], "label": b["label"]} for b in _batches()]
    trainer = SupervisedTrainer("cpu", 3, data, net, torch.optim.SGD(net.parameters(), 0.1), loss)
    attach_resume(trainer, tmp_path, None, _checkpoint(trainer))
    stop_on_nan(trainer, tmp_path)
    with pytest.raises(
        InputError, match=r"epoch 2, iteration 4: the loss is nan; the last good checkpoint is .*checkpoint_epoch=1\.pt"
    ):
        trainer.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]


# ------------------------------------------------------------------------------ through the bundle


def test_the_gan_stage_goes_with_the_methods_that_have_a_discriminator(tiny_gan):
    """The overlays of the methods with a discriminator declare the GAN stage (and only they do)."""
    configs = BUNDLE_ROOT / "configs"
    files = train_configs(TINY_GAN)
    assert files == [str(configs / "inference.json"), str(configs / "train.json"), str(tiny_gan.overlay), files[-1]]
    assert files[-1] == str(configs / "train_gan.json")
    assert tiny_gan.adversarial and card.describe(tiny_gan)["adversarial"]
    for name in methods.names():
        files = {f for stage in methods.get(name).stages.values() for f in stage}
        assert ("train_gan.json" in files) == methods.get(name).adversarial, name


@needs_data(DATA / "nih_cxr14")
@pytest.mark.slow
def test_the_stage_and_the_method_must_agree(tiny_gan, tmp_path):
    args = ("--train_limit", "1", "--run_dir", tmp_path / "run", "--ckpt_path", tmp_path / "w.pt")
    alone = run_config(TRAIN, TINY_GAN, *args)
    assert alone.returncode != 0 and f"method '{TINY_GAN}' has no 'train' stage" in alone.stdout
    assert f'with gan: --config_file "{train_files(TINY_GAN)}"' in alone.stdout.replace("\n", "")
    wrong = run_config(GAN, "srcnn", *args)
    assert wrong.returncode != 0 and "method 'srcnn' has no 'gan' stage" in wrong.stdout
    assert not (tmp_path / "w.pt").exists()


@needs_data(DATA / "nih_cxr14")
@pytest.mark.slow
def test_tiny_gan_trains_resumes_and_publishes_its_generator(tiny_gan, tmp_path):
    run = tmp_path / "run"
    args = ("--train_limit", "2", "--log_every", "1", "--run_dir", run, "--ckpt_path", tmp_path / "w.pt")
    first = _ok(run_config(train_files(TINY_GAN), TINY_GAN, "--max_epochs", "1", *args))
    assert "content: " in first.stdout and "discriminator: " in first.stdout  # both losses logged
    second = _ok(run_config(train_files(TINY_GAN), TINY_GAN, "--max_epochs", "2", *args))
    assert f"Restored all variables from {run / 'checkpoint_epoch=1.pt'}" in second.stdout
    assert "Epoch[2] Complete" in second.stdout and "Epoch[1] Complete" not in second.stdout
    state = torch.load(run / "checkpoint_epoch=2.pt", weights_only=True)
    tiny_gan.discriminator().load_state_dict(state["discriminator"])  # the discriminator resumes too
    provenance = json.loads((tmp_path / "weights.json").read_text())["w.pt"]
    assert "train_gan.json" in provenance["command"] and provenance["adversarial"]["relativistic"] is True
    assert provenance["losses"]["perceptual"]["layers"] == {"relu1_2": 1.0}
    # a GAN is selected by LPIPS (lower is better), PSNR and SSIM still reported
    assert 0.0 < provenance["best_val_lpips"] < 1.0 and "best_val_psnr" not in provenance
    assert "val_psnr" in second.stdout and "val_ssim" in second.stdout
    generator = tiny_gan.load(tmp_path / "w.pt")  # the published file is the generator alone, loaded strictly
    with torch.no_grad():
        assert generator(torch.rand(1, 1, 8, 8)).shape == (1, 1, 32, 32)
