"""Winograd F(4x4, 3x3) convolution for CPU inference (A. Lavin, S. Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016).

Why it exists: VDSR runs 18 3x3 convolutions of 64 channels at the *output* resolution, ~350 GFLOP for a
512x512 image, which direct convolution (oneDNN, inductor, ONNX Runtime alike) cannot do in 2 s on a
2-core AVX2 CPU. Winograd F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input tile with 36 instead
of 144 multiplies per channel pair: the input tiles and the filters are transformed (``B^T d B``,
``G g G^T``), multiplied position by position — 36 GEMMs (tiles x C_in) @ (C_in x C_out), one ``torch.bmm``
— and transformed back (``A^T m A``). The transforms are written with PyTorch ops and fused by
``torch.compile``; the image is processed in bands of tile rows so that each band's intermediates stay in
cache. Inference only (no autograd); fp32 results match ``nn.Conv2d`` to ~1e-5 for a 20-layer VDSR.
Each layer's bands are split between ``torch.get_num_threads()`` worker threads that each run their bands
on one core (the ops release the GIL): one join per layer instead of thousands of short OpenMP regions,
whose barriers made timings jitter from 1.6 to 4 s on a 2-vCPU machine. While a Winograd layer runs,
torch's intra-op thread count is 1 for the whole process (it is restored afterwards).
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from monai_sr_bundle.errors import InputError

# Lavin & Gray F(4,3) with interpolation points 0, 1, -1, 2, -2, inf:  y = A^T [(G g) * (B^T d)].
BT = torch.tensor(
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)  # fmt: skip
G = torch.tensor(
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)  # fmt: skip
AT = torch.tensor(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=torch.float64
)
BAND = 2  # tile rows (8 image rows) per band, so that a band's intermediates stay in L2


def _bt(d: list[torch.Tensor]) -> list[torch.Tensor]:
    """``B^T`` applied to 6 slices (its rows, with the common terms shared)."""
    d0, d1, d2, d3, d4, d5 = d
    return [4 * d0 - 5 * d2 + d4, (d3 + d4) - 4 * (d1 + d2), (d4 - d3) + 4 * (d1 - d2),
            (d4 - d2) + 2 * (d3 - d1), (d4 - d2) - 2 * (d3 - d1), 4 * d1 - 5 * d3 + d5]  # fmt: skip


def _at(m: list[torch.Tensor]) -> list[torch.Tensor]:
    """``A^T`` applied to 6 slices."""
    m0, m1, m2, m3, m4, m5 = m
    s12, d12, s34, d34 = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return [m0 + s12 + s34, d12 + 2 * d34, s12 + 4 * s34, d12 + 8 * d34 + m5]


def _band(xb: torch.Tensor, u: torch.Tensor, bias: torch.Tensor, relu: bool, out: torch.Tensor) -> None:
    """One band: ``xb`` (N, 4*bt+2, 4*Tj+2, C) zero-padded NHWC input rows, ``u`` (36, C, K) transformed
    filters; writes the (N, 4*bt, 4*Tj, K) output (bias added, ReLU if ``relu``) into ``out``."""
    n, rows, cols, c = xb.shape
    bt, tj = (rows - 2) // 4, (cols - 2) // 4
    r = _bt([xb[:, k : k + 4 * bt : 4] for k in range(6)])  # 6 x (N, bt, cols, C)
    v = torch.stack([torch.stack(_bt([ra[:, :, k : k + 4 * tj : 4] for k in range(6)])) for ra in r])
    m = torch.bmm(v.reshape(36, -1, c), u).view(6, 6, n, bt, tj, -1)
    z = _at(list(m.unbind(0)))  # 4 x (6, N, bt, Tj, K)
    act = torch.relu if relu else (lambda t: t)
    y = torch.stack([torch.stack([act(t + bias) for t in _at(list(zp.unbind(0)))], 3) for zp in z], 2)
    out.copy_(y.view(out.shape))


_band_compiled = torch.compile(_band, dynamic=False)
_pools: dict[int, ThreadPoolExecutor] = {}


def _executor(workers: int) -> ThreadPoolExecutor:
    """A shared pool of ``workers`` threads (one per thread count asked for, kept for the process)."""
    if workers not in _pools:
        _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="winograd")
    return _pools[workers]


def _to_nchw(buf: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The image inside a zero-bordered NHWC buffer as a fresh (N, C, H, W) channels_last tensor."""
    return buf[:, 1 : h + 1, 1 : w + 1].permute(0, 3, 1, 2).clone(memory_format=torch.channels_last)


def _eligible(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min(conv.in_channels, conv.out_channels) >= 16  # the 1->64 and 64->1 ends stay direct
    )


class WinogradSequential(nn.Module):
    """Inference replacement of an ``nn.Sequential``: every eligible 3x3 convolution (with the ReLU that
    follows it fused) runs as Winograd F(4x4, 3x3); other modules run as they are, in channels_last.
    Consecutive Winograd layers ping-pong between two zero-bordered NHWC buffers kept between calls."""

    def __init__(self, seq: nn.Sequential, compile: bool = True) -> None:
        super().__init__()
        self.band = _band_compiled if compile else _band
        self.steps: list[tuple] = []  # ("wino", u, bias, relu) or ("module", module)
        self.mods = nn.ModuleList()
        children = list(seq)
        i = 0
        while i < len(children):
            m = children[i]
            if _eligible(m):
                relu = i + 1 < len(children) and type(children[i + 1]) is nn.ReLU
                w = m.weight.detach().double()
                u = torch.einsum("ai,kcij,bj->abck", G, w, G).reshape(36, m.in_channels, m.out_channels)
                bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels)
                self.steps.append(("wino", u.float().contiguous(), bias.float().contiguous(), relu))
                i += 2 if relu else 1
            else:
                self.mods.append(m)
                self.steps.append(("module", m))
                i += 1
        self._shape: tuple = ()
        self._cache: dict[tuple, torch.Tensor] = {}

    def _workspace(self, slot: int, n: int, h: int, w: int, c: int) -> torch.Tensor:
        """Zero-bordered (N, tiles rows + 2, tile cols + 2, C) NHWC buffer, kept while (N, H, W) stays and
        the caller stays in or out of inference mode (an inference tensor cannot be updated outside it)."""
        key = (n, h, w, torch.is_inference_mode_enabled())
        if self._shape != key:
            self._shape, self._cache = key, {}
        if (slot, c) not in self._cache:
            nb, tj = -(-h // (4 * BAND)), -(-w // 4)
            self._cache[(slot, c)] = torch.zeros(n, 4 * BAND * nb + 2, 4 * tj + 2, c)
        return self._cache[(slot, c)]

    def _layer(
        self, src: torch.Tensor, dst: torch.Tensor, u: torch.Tensor, bias: torch.Tensor, relu: bool, workers: int
    ) -> None:
        """One Winograd layer from ``src`` into ``dst``: contiguous runs of bands, one per worker thread."""
        rows, cols = src.shape[1] - 2, src.shape[2] - 2
        starts = list(range(0, rows, 4 * BAND))
        per = -(-len(starts) // workers)
        inference = torch.is_inference_mode_enabled()

        def run(chunk: list[int]) -> None:
            with torch.inference_mode(inference), torch.no_grad():  # thread-local modes, as in the caller
                for r0 in chunk:
                    self.band(
                        src[:, r0 : r0 + 4 * BAND + 2], u, bias, relu, dst[:, 1 + r0 : 1 + r0 + 4 * BAND, 1 : cols + 1]
                    )

        chunks = [starts[i : i + per] for i in range(0, len(starts), per)]
        if len(chunks) == 1:
            run(chunks[0])
            return
        list(_executor(len(chunks)).map(run, chunks))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        threads = torch.get_num_threads()
        src, h, w = None, 0, 0  # the current buffer (and its image size) while inside a run of Winograd layers
        try:
            for step in self.steps:
                if step[0] == "module":
                    torch.set_num_threads(threads)
                    if src is not None:  # leave the run: a fresh NCHW (channels_last) tensor
                        x, src = _to_nchw(src, h, w), None
                    x = step[1](x)
                    continue
                _, u, bias, relu = step
                if src is None:
                    n, c, h, w = x.shape
                    slot, src = 0, self._workspace(0, n, h, w, c)
                    src[:, 1 : h + 1, 1 : w + 1].copy_(x.permute(0, 2, 3, 1))
                slot = 1 - slot
                dst = self._workspace(slot, n, h, w, u.shape[-1])
                torch.set_num_threads(1)
                self._layer(src, dst, u, bias, relu, threads)
                if dst.shape[1] - 2 > h or dst.shape[2] - 2 > w:  # tiles past the image edge: restore the zero border
                    dst[:, h + 1 :].zero_()
                    dst[:, :, w + 1 :].zero_()
                src = dst
        finally:
            torch.set_num_threads(threads)
        if src is not None:
            x = _to_nchw(src, h, w)
        return x


def winograd_network(network: nn.Module, device: str | torch.device, method: str) -> nn.Module:
    """``network`` of ``method`` as ``--winograd`` asks (:func:`winograd_inference`), refused in one sentence on a
    GPU and for a network that says it gains nothing (``winograd_speedup = False``: not a VDSR-style stack)."""
    if torch.device(device).type != "cpu":
        raise InputError("--winograd is a CPU speed-up; drop it on a GPU.")
    if not getattr(network, "winograd_speedup", True):
        raise InputError(
            f"--winograd speeds up VDSR-style stacks of 3x3 convolutions; method {method!r} gains nothing from it: "
            "drop --winograd."
        )
    return winograd_inference(network)


def winograd_inference(model: nn.Module, compile: bool = True) -> nn.Module:
    """Eval-mode copy of ``model`` in which every ``nn.Sequential`` holding an eligible 3x3 convolution
    (stride 1, padding 1, >= 16 channels in and out) is replaced by a :class:`WinogradSequential`. For
    inference only: the weights are transformed once, later changes to ``model`` are not seen."""
    model = copy.deepcopy(model).eval()
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Sequential) and any(_eligible(m) for m in mod):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            if name == "":
                return WinogradSequential(mod, compile)
            setattr(parent, name.rpartition(".")[2], WinogradSequential(mod, compile))
    return model
