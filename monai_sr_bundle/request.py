"""One SR request's options, passed the same way by every surface: the CLI's ``sr``, the Slicer worker, MONAI
Label and the bundle's ``inference.json`` build an :class:`SRRequest`,
:meth:`~monai_sr_bundle.inference.Predictor.check` is the one place that validates it, and
:func:`~monai_sr_bundle.batch.run_inference` runs it; so a bad option is the same sentence on every surface.

A frozen dataclass, not a pydantic model: pydantic comes with MONAI Label and NVFlare, not with a plain
``pip install monai-sr`` (whose worker reads these requests), and every refusal is the project's own sentence
(one, naming the input), which pydantic's messages would have to be translated back into field by field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from monai_sr_bundle.limits import MAX_OUTPUT_MP


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
