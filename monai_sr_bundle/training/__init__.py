"""What the bundle's train configs cannot say declaratively, one file per part of a run, side by side:

- :mod:`.loop`: what every stage's loop shares on MONAI's engines: the prepare-batch and inferer of a
  supervised step, the validation's metric wiring, resuming from a checkpoint, stopping on a non-finite loss
  or at a time limit (with the learning rate annealed over that time), a last validation;
- :mod:`.gan`: the GAN stage's trainer (``configs/train_gan.json``);
- :mod:`.diffusion`: the diffusion stages' prepare-batches and step (``configs/train_diffusion.json``,
  ``configs/train_autoencoder.json``, ``configs/train_latent.json``);
- :mod:`.publish`: the best checkpoint published as a plain, hashed state dict under ``models/`` with the
  command, data and timing that made it.

What is not training lives with what it is about: the batch by name with the losses
(:func:`~monai_sr_bundle.losses.batch.named_batch`), a method's stage configs with the registry
(:mod:`monai_sr_bundle.stages`), weight files and their manifest in :mod:`monai_sr_bundle.weights`, what a lost
process says in :mod:`monai_sr_bundle.distributed`.

All of it holds under ``torch.distributed`` (several processes, one per GPU): checkpoints and weights hold
the unwrapped modules the config builds (never a ``DistributedDataParallel`` wrapper's ``module.`` names) and
are written by the first process only, atomically; a non-finite loss in any process stops every process."""
