"""One SR request's options, passed the same way by every surface: the CLI's ``sr``, the Slicer worker, MONAI
Label and the bundle's ``inference.json`` build an :class:`SRRequest`,
:meth:`~monai_sr_bundle.inference.Predictor.check` is the one place that validates it (with the checks of a
method's options here: :func:`check_sampling`, :func:`check_noise_level`, and :func:`check_scale`, which
:class:`~monai_sr_bundle.methods.Method` asks), and :func:`~monai_sr_bundle.batch.run_inference` runs it; so a
bad option is the same sentence on every surface.

A frozen dataclass, not a pydantic model: pydantic comes with MONAI Label and NVFlare, not with a plain
``pip install monai-sr`` (whose worker reads these requests), and every refusal is the project's own sentence
(one, naming the input), which pydantic's messages would have to be translated back into field by field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from monai_sr_bundle.constants import MAX_SCALE
from monai_sr_bundle.errors import InputError, shown
from monai_sr_bundle.limits import MAX_OUTPUT_MP

#: options that only a stochastic method's sampler takes
SAMPLING_OPTIONS = ("sampler", "steps", "seed", "samples")
#: most draws per image for the uncertainty maps (each is a whole sampling run)
MAX_SAMPLES = 64
#: the largest seed a sampler takes (torch's generators hold 64 bits)
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SRRequest:
    """What a request asks besides its images and method; None: the default (the predictor's, else the
    method's).

    Args:
        noise_level: a degradation-aware method's input noise in grey levels of 255 (None or ``"auto"``:
            estimated from each image, :mod:`monai_sr_bundle.networks.noise`).
        sampler, steps, seed: a stochastic method's sampling.
        samples: draws per image; above 1 the SR is their mean, with uncertainty maps beside it.
        precision, runtime: how the network runs; they choose what loads
            (:meth:`~monai_sr_bundle.methods.Method.predictor`, checked by :func:`~monai_sr_bundle.engine.resolve`).
        max_output_mp: the largest SR result in megapixels (:mod:`monai_sr_bundle.limits`).
    """

    noise_level: float | str | None = None
    sampler: str | None = None
    steps: int | None = None
    seed: int | None = None
    samples: int | None = None
    precision: str = "auto"
    runtime: str = "auto"
    max_output_mp: float = MAX_OUTPUT_MP

    @classmethod
    def of(cls, values: Mapping) -> SRRequest:
        """The options among ``values`` (a worker's request line, MONAI Label's params, parsed arguments); other
        keys are the surface's own, and a null is the option's default."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None})

    @property
    def sampling(self) -> dict:
        """The sampler's options given (``sampler``, ``steps``, ``seed``)."""
        given = {"sampler": self.sampler, "steps": self.steps, "seed": self.seed}
        return {k: v for k, v in given.items() if v is not None}


def check_scale(name: str, scale) -> int:
    """The SR factor a run of method ``name`` asks for, as an int: a whole number (``4.0`` passes, as a
    parsed config may give it) from 1 to :data:`~monai_sr_bundle.constants.MAX_SCALE`."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or int(scale) != scale or scale < 1:
        raise InputError(f"method {name!r}: scale must be a positive whole number, got {shown(scale)}.")
    if scale > MAX_SCALE:
        raise InputError(f"method {name!r}: scale must be at most {MAX_SCALE}, got {shown(scale)}.")
    return int(scale)


def check_sampling(method, **options) -> None:
    """Refuse sampler options (``sampler``, ``steps``, ``seed``, ``samples``) for a deterministic ``method``
    (:class:`~monai_sr_bundle.methods.Method`), an unknown sampler, and numbers that are not positive whole
    numbers (``seed`` may be 0, ``samples`` is at most :data:`MAX_SAMPLES`)."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(SAMPLING_OPTIONS))
    if unknown:
        raise InputError(f"unknown sampling option(s) {', '.join(unknown)}; use {', '.join(SAMPLING_OPTIONS)}.")
    if given and not method.stochastic:
        raise InputError(
            f"method {method.name!r} is deterministic and has no sampler: drop {', '.join(given)} "
            "(options of stochastic methods only)."
        )
    sampler = given.pop("sampler", None)
    if sampler is not None:
        from monai_sr_bundle.diffusion.samplers import SAMPLERS

        if not isinstance(sampler, str) or sampler not in SAMPLERS:
            raise InputError(f"method {method.name!r}: unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}.")
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
            raise InputError(
                f"method {method.name!r}: {key} must be a whole "
                f"number{' >= 0' if key == 'seed' else ' >= 1'}, got {value!r}."
            )
    if given.get("seed", 0) > MAX_SEED:
        raise InputError(f"method {method.name!r}: seed must be at most 2**63 - 1 (torch's), got {given['seed']}.")
    if given.get("samples", 1) > MAX_SAMPLES:
        raise InputError(
            f"method {method.name!r}: samples must be at most {MAX_SAMPLES} (each is a whole sampling run), "
            f"got {given['samples']}."
        )


def check_noise_level(method, noise_level) -> float | None:
    """A noise level a user gave, as a number (None: estimate it from each image), refused in one sentence when
    it is no level (:func:`~monai_sr_bundle.transforms.noise.checked_noise_level`) or ``method``'s network takes
    none."""
    from monai_sr_bundle.transforms.noise import checked_noise_level

    level = checked_noise_level(noise_level, f"method {method.name!r}: the noise level")
    if level is not None and not method.noise_aware:
        raise InputError(
            f"method {method.name!r} is not told how noisy its input is: drop the noise level (options of "
            "degradation-aware methods only)."
        )
    return level
