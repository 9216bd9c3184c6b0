"""The tiling inferer: SR of full-size radiographs and CT volumes in bounded memory.

Two ways to stitch tiles, chosen per method (:attr:`monai_sr_bundle.methods.Method.stochastic`):

- ``crop`` (deterministic networks): each tile carries ``halo`` LR pixels of context beyond its core, the
  network's receptive field as the network declares it, and only the core is kept, so the tiled output
  equals the whole-image output up to float rounding and costs no more context than the network needs.
- ``blend`` (stochastic networks, e.g. diffusion samplers): overlapping tiles are averaged with Gaussian
  weights (sigma an eighth of the tile, as ``sliding_window_inference(mode="gaussian")``), because
  independent noise per tile would leave seams at hard core borders. The weight is a product of 1D
  Gaussians each floored at 1e-3, not a 2D Gaussian floored as a whole: along the image border every
  tile sits at its own edge, and a whole-map floor would give all of them the same weight there and
  bring the seams back. The network is called with a
  ``generator`` seeded once per image, so a given ``seed`` reproduces the output bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from monai_sr_bundle import cancel
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.transforms.degradation import zoom_geometry

MERGE_MODES = ("crop", "blend")


def crop_windows(size: int, tile: int, halo: int, align: int = 1) -> tuple[int, list[tuple[int, int, int]]]:
    """Equal windows along an axis of ``size`` LR pixels for core-crop stitching: the fewest cores that fit
    ``tile`` with ``halo`` on both sides, spread evenly. Returns the window length and, per window, (window
    start, core start, core stop); every core has its full halo inside the window, or the image edge. Window
    starts are multiples of ``align`` (a network that halves its input needs every tile to halve the same
    pixel pairs as the whole image), the windows ``align - 1`` pixels longer to make up for it."""
    if size <= tile:
        return size, [(0, 0, size)]
    core = tile - 2 * halo
    if core < 1:
        raise InputError(
            f"tile size {tile} leaves no room for the network's {halo}-pixel context; use a tile size above {2 * halo}."
        )
    n = -(-size // core)
    bounds = [round(i * size / n) for i in range(n + 1)]
    length = min(size, max(b - a for a, b in zip(bounds, bounds[1:])) + 2 * halo + align - 1)
    length += (size - length) % align  # so that the last window, flush with the far edge, starts aligned
    starts = [min(max(a - halo, 0), size - length) // align * align for a in bounds[:-1]]
    return length, [(s, a, b) for s, a, b in zip(starts, bounds, bounds[1:])]


def blend_weight(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(height, width) Gaussian tile weight, separable, sigma = size / 8, each factor floored at 1e-3."""

    def gauss(n: int) -> torch.Tensor:
        t = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        return torch.exp(-0.5 * (t / (0.125 * n)) ** 2).clamp(min=1e-3)

    return gauss(height)[:, None] * gauss(width)[None, :]


def blend_windows(size: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """Equal windows of ``min(tile, size)`` pixels that overlap by at least ``overlap``, spread evenly;
    returns the window length and the window starts."""
    if size <= tile:
        return size, [0]
    n = -(-(size - overlap) // (tile - overlap))
    return tile, [round(i * (size - tile) / (n - 1)) for i in range(n)]


class SRInferer(Inferer):
    """Super-resolve a batch (B, C, X, Y), or a CT batch (B, C, X, Y, Z) in-plane slice by slice, in tiles
    of at most ``tile_size`` LR pixels. The output is clamped to [0, 1] and, for MetaTensors, carries the
    input's geometry with the in-plane spacing divided by ``scale``.

    Args:
        scale: the network's SR factor.
        tile_size: LR tile edge; memory grows with its square.
        halo: LR pixels of context a tile needs beyond its core (the network's ``halo``), for ``crop``.
        merge: ``crop`` (exact, deterministic networks) or ``blend`` (Gaussian-weighted, stochastic ones).
        overlap: fraction of a tile shared with its neighbours, for ``blend``.
        seed: seed of the generator that a ``blend`` network draws its noise from, once per call.
        sw_batch_size: tiles per forward pass.
        align: window starts are multiples of it, for ``crop`` (the network's ``tile_align``).
        whole_size: for ``crop``, an image up to this many LR pixels a side runs in one call whatever the tile
            size (an engine's: no halos to compute twice, :func:`~monai_sr_bundle.engine.whole_size`).
        progress: show a progress bar over the tiles.
        network_kwargs: keyword arguments of every network call (a diffusion method's ``sampler``, ``steps``).
    """

    def __init__(
        self,
        scale: int = 4,
        tile_size: int = 256,
        halo: int = 8,
        merge: str = "crop",
        overlap: float = 0.25,
        seed: int = 0,
        sw_batch_size: int = 1,
        progress: bool = False,
        network_kwargs: dict | None = None,
        align: int = 1,
        whole_size: int = 0,
    ) -> None:
        super().__init__()
        if merge not in MERGE_MODES:
            raise InputError(f"unknown tile merge mode {merge!r}; use one of {', '.join(MERGE_MODES)}.")
        if int(tile_size) < 1:
            raise InputError(f"tile size must be a positive number of pixels, got {tile_size!r}.")
        self.scale, self.tile_size, self.halo = int(scale), int(tile_size), int(halo)
        self.merge, self.overlap, self.seed = merge, float(overlap), int(seed)
        self.sw_batch_size, self.progress, self.align = int(sw_batch_size), progress, max(1, int(align))
        self.network_kwargs = dict(network_kwargs or {})
        self.whole_size = int(whole_size)

    def _tiles(
        self, shape: tuple[int, int]
    ) -> tuple[tuple[int, int], list[tuple[tuple[int, int, int], tuple[int, int, int]]]]:
        """Window size and, per tile, ((row start, core start, core stop), (col ...)) in LR pixels; for
        ``blend`` the core is the whole window."""
        if self.merge == "crop":
            tile = self.whole_size if max(shape) <= self.whole_size else self.tile_size
            (th, rows), (tw, cols) = (crop_windows(n, tile, self.halo, self.align) for n in shape)
        else:
            ov = int(round(self.overlap * self.tile_size))
            (th, rows), (tw, cols) = (blend_windows(n, self.tile_size, ov) for n in shape)
            rows, cols = [(r, r, r + th) for r in rows], [(c, c, c + tw) for c in cols]
        return (th, tw), [(r, c) for r in rows for c in cols]

    def _infer_2d(
        self, x: torch.Tensor, network: Callable[..., torch.Tensor], generator: torch.Generator | None
    ) -> torch.Tensor:
        from tqdm import tqdm

        s, n = self.scale, x.shape[0]
        (th, tw), tiles = self._tiles(tuple(x.shape[-2:]))
        kwargs = self.network_kwargs if generator is None else {**self.network_kwargs, "generator": generator}
        weight = None
        if self.merge == "blend" and len(tiles) > 1:
            weight = blend_weight(th * s, tw * s, x.device)
        out = norm = None
        for i in tqdm(range(0, len(tiles), self.sw_batch_size), desc="tiles", disable=not self.progress):
            cancel.check()
            group = tiles[i : i + self.sw_batch_size]
            pred = network(torch.cat([x[..., r[0] : r[0] + th, c[0] : c[0] + tw] for r, c in group]), **kwargs)
            if tuple(pred.shape[-2:]) != (th * s, tw * s):
                raise ValueError(f"the network turned a {th}x{tw} tile into {tuple(pred.shape[-2:])}, not x{s}.")
            if len(tiles) == 1:
                return pred
            if out is None:
                out = pred.new_zeros((n, pred.shape[1], x.shape[-2] * s, x.shape[-1] * s))
                norm = pred.new_zeros((1, 1, *out.shape[-2:])) if weight is not None else None
            for j, ((r0, r1, r2), (c0, c1, c2)) in enumerate(group):
                part = pred[j * n : (j + 1) * n, :, (r1 - r0) * s : (r2 - r0) * s, (c1 - c0) * s : (c2 - c0) * s]
                if weight is None:
                    out[..., r1 * s : r2 * s, c1 * s : c2 * s] = part
                else:
                    out[..., r1 * s : r2 * s, c1 * s : c2 * s] += part * weight
                    norm[..., r1 * s : r2 * s, c1 * s : c2 * s] += weight
        return out if norm is None else out / norm

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        return zoom_geometry(inputs, self.draw(inputs, network)[0], self.scale)

    def draw(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], samples: int = 1) -> torch.Tensor:
        """``samples`` SR images of the batch, stacked first (samples, B, C, ...), clamped to [0, 1]; a
        stochastic network draws them in turn from one generator, so a seed fixes all of them."""
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        x = x.to(torch.float32)
        if x.ndim not in (4, 5):
            raise InputError(f"expected a batch (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(x.shape)}.")
        generator = torch.Generator(x.device).manual_seed(self.seed) if self.merge == "blend" else None
        out = []
        for _ in range(samples):
            if x.ndim == 4:
                out.append(self._infer_2d(x, network, generator))
            else:
                out.append(
                    torch.stack([self._infer_2d(x[..., k], network, generator) for k in range(x.shape[-1])], dim=-1)
                )
        return torch.stack(out).clamp(0.0, 1.0)
