"""The GAN stage: training of an SR generator on MONAI's ``AdversarialTrainer`` (``configs/train_gan.json``).

MONAI's trainer was written for generators of images from noise: it takes the generator's input as the real
sample (``REALS = inputs``) and hands the generator's adversarial loss the fake logits only. For SR the input
is the LR image and the real sample is the HR target, and ESRGAN's relativistic loss needs the real logits
too. A subclass fixes both through the trainer's own iteration events instead of a copied loop, so SRGAN,
ESRGAN and the hybrid differ only by the settings of their overlays."""

from __future__ import annotations

import torch
from monai.engines import AdversarialTrainer
from monai.utils import AdversarialIterationEvents, AdversarialKeys
from monai.utils import CommonKeys as Keys

from monai_sr_bundle.losses.adversarial import AdversarialLoss


class SRAdversarialTrainer(AdversarialTrainer):
    """``AdversarialTrainer`` whose real samples are the HR targets.

    Once the generator has run, ``REALS`` becomes the HR target of the named batch that the prepare-batch
    made the label (:class:`~monai_sr_bundle.losses.batch.SRBatch`); the generator's loss is the content loss
    (``recon_loss_function``, e.g. pixel + perceptual) plus ``adversarial_loss.generator``, given the
    discriminator's logits of the reals when the game is relativistic; ``loss`` in the output is that total,
    as ``SupervisedTrainer`` reports it, so the train config's handlers log and guard it unchanged.
    ``network`` / ``optimizer`` are the generator's and ``discriminator`` / ``d_optimizer`` the
    discriminator's, the names ``SupervisedTrainer`` and the train config's ``checkpoint`` use.

    Args:
        adversarial_loss: both sides of the game (it replaces ``g_loss_function`` and ``d_loss_function``).
        kwargs: the rest of ``AdversarialTrainer``'s arguments.
    """

    def __init__(self, adversarial_loss: AdversarialLoss, **kwargs) -> None:
        self.adversarial_loss = adversarial_loss
        super().__init__(g_loss_function=self._generator_loss, d_loss_function=adversarial_loss.discriminator, **kwargs)
        self.add_event_handler(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED, self._reals_are_targets)
        self.add_event_handler(AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED, self._report_loss)

    def _complete_state_dict_user_keys(self) -> None:
        """Keep the networks, optimizers and losses out of the engine's own state dict: MONAI puts the objects
        themselves there, which pickles whole modules into the checkpoint and makes it unreadable with
        ``weights_only=True``. The train config saves their state dicts beside the engine's instead."""

    @property
    def network(self) -> torch.nn.Module:
        return self.state.g_network

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.state.g_optimizer

    @property
    def discriminator(self) -> torch.nn.Module:
        return self.state.d_network

    @property
    def d_optimizer(self) -> torch.optim.Optimizer:
        return self.state.d_optimizer

    @staticmethod
    def _reals_are_targets(engine: SRAdversarialTrainer) -> None:
        out = engine.state.output
        out[AdversarialKeys.REALS] = out[Keys.LABEL].target

    def _generator_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        real_logits = None
        if self.adversarial_loss.relativistic:
            with torch.no_grad():
                reals = self.state.output[AdversarialKeys.REALS].contiguous()
                real_logits = self.d_inferer(reals, self.state.d_network)
        return self.adversarial_loss.generator(fake_logits, real_logits)

    @staticmethod
    def _report_loss(engine: SRAdversarialTrainer) -> None:
        out = engine.state.output
        out[Keys.LOSS] = (out[AdversarialKeys.RECONSTRUCTION_LOSS] + out[AdversarialKeys.GENERATOR_LOSS]).detach()
