"""The size limit every surface puts on an SR result, kept free of torch so that a command line can name it in its
help before the libraries load."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai_sr_bundle.errors import InputError

#: the largest SR result, in megapixels, that a surface makes unless told otherwise (``--max-output-mp``,
#: MONAI Label's ``--conf max_output_mp``): a 100 KB PNG may declare 9400 x 9400 pixels, whose x4 SR takes
#: 6 GB; 64 megapixels (a 2000 x 2000 radiograph at x4) peaks at about 2.4 GB.
MAX_OUTPUT_MP = 64


def check_output_size(
    shape: Sequence[int],
    name: str,
    scale: int,
    max_output_mp: float = MAX_OUTPUT_MP,
    option: str = "max_output_mp, --max-output-mp on the command line,",
) -> None:
    """Refuse an image whose SR would exceed ``max_output_mp`` megapixels (a volume's slices together: they are
    held whole), from its spatial ``shape`` (X, Y[, Z]) as a header gives it, before any pixel is decoded;
    the sentence names the ``option`` that lifts the limit."""
    megapixels = math.prod(shape) * scale**2 / 1e6
    if megapixels > max_output_mp:  # only then formatted: the limit is finite
        size = f"{megapixels:.0f}" if megapixels >= 10 else f"{megapixels:.2g}"
        raise InputError(
            f"{name}: {'x'.join(map(str, shape))} at x{scale} would be {size} megapixels, more than the limit of "
            f"{max_output_mp:g} that keeps memory bounded ({option} lifts it)."
        )
