"""Tiling overhead: what bounded-memory tiles cost against one pass over the whole image, per method.

A real NIH radiograph (512x512) is the LR input of x4 SR (2048x2048 output); each deterministic method with
weights runs once whole and once in its own 256-px tiles (core-crop with the network's declared halo), and,
for context, in tiles with the fixed 32-px margin of the former 25% overlap. Writes docs/tiling.md.

Run: .venv/bin/python -m benchmarks.tiling [--repeats 3]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import REPO
from monai_sr_bundle import methods
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.tiling import SRInferer

TILE = 256
OLD_MARGIN = 32  # the former fixed overlap: 25% of a 256-px tile, halved on each side
BAR = 1.25


def seconds(inferer: SRInferer, network: torch.nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        start = time.perf_counter()
        out = inferer(x, network)
        return time.perf_counter() - start, out


def computed_pixels(inferer: SRInferer, shape: tuple[int, int]) -> float:
    """LR pixels the tiles feed to the network, per pixel of the image."""
    (th, tw), tiles = inferer._tiles(shape)
    return len(tiles) * th * tw / (shape[0] * shape[1])


def main() -> int:
    parser = harness.parser(__file__, __doc__, work=False)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each layout (median), alternating")
    args = harness.parse(parser)
    image = nih_datalist("test", limit=1)[0]["label"]
    x = read_image(image)[None].as_tensor()  # (1, 1, 512, 512)
    rows, bars, measured, used = [], [], {}, []
    start = time.perf_counter()
    for name in methods.names():
        method = methods.get(name, 4)
        if method.stochastic or (method.trainable and not method.weights_available):
            continue
        network = method.load()
        layouts = {
            "whole": SRInferer(4, tile_size=max(x.shape[-2:])),
            "tiles": method.inferer(TILE),
            "old": SRInferer(4, tile_size=TILE, halo=OLD_MARGIN),
        }
        times: dict[str, list[float]] = {k: [] for k in layouts}
        outputs = {}
        seconds(layouts["tiles"], network, x[..., :64, :64])  # warm-up
        for _ in range(args.repeats):
            for key in ("whole", "tiles") + (("old",) if not times["old"] else ()):  # the old layout once: context only
                t, outputs[key] = seconds(layouts[key], network, x)
                times[key].append(t)
        whole, tiled, old = (statistics.median(times[k]) for k in ("whole", "tiles", "old"))
        diff = (outputs["tiles"] - outputs["whole"]).abs().max().item()
        n_tiles = len(layouts["tiles"]._tiles(tuple(x.shape[-2:]))[1])
        share = computed_pixels(layouts["tiles"], tuple(x.shape[-2:]))
        measured[name] = {"halo": method.halo, "tiles": n_tiles, "computed_share": share, "one_pass_s": whole}
        measured[name] |= {"tiled_s": tiled, "old_margin_s": old, "max_abs_diff": diff}
        used.append(method)
        rows.append(
            f"| {name} | {method.halo} | {n_tiles} | "
            f"{share:.3f} | {whole:.2f} | "
            f"{tiled:.2f} | {tiled / whole:.3f} | {old / whole:.3f} | {diff:.1e} |"
        )
        bars.append(
            f"- {name}: tiled / one pass = {tiled / whole:.3f} (bar: <= {BAR}) -> "
            f"{'met' if tiled / whole <= BAR else 'NOT met'}"
        )
        print(rows[-1], flush=True)
    table = [
        "| method | halo (LR px) | tiles | computed / image pixels | one pass (s) | tiled (s) | tiled / one pass | "
        f"old {OLD_MARGIN}-px margin / one pass | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    data = f"{Path(image).name} (512 px, the first NIH test image) as the LR input, x4"
    harness.record(args, data, used, {"main": measured}, (time.perf_counter() - start) / 60, tile=TILE)
    doc = f"""# Tiling overhead

x4 SR of `{Path(image).name}` (512x512, the first NIH test image) used as the LR input (2048x2048 output),
on {torch.get_num_threads()} CPU threads. "one pass" is the whole image in one forward; "tiled" is the
method's own inferer with {TILE}-px tiles, each carrying the network's declared halo around its core
(core-crop stitching, the same result to float rounding); the last ratio is the former layout, a fixed
{OLD_MARGIN}-px margin, timed once. Median of {args.repeats} alternating runs. Produced by:

    .venv/bin/{args.command}

{chr(10).join(table)}

Bars of issue 10:
{chr(10).join(bars)}
"""
    (REPO / "docs" / "tiling.md").write_text(doc)
    print("\n".join(table + [""] + bars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
