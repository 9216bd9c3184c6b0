"""Latent-diffusion benchmark of the shipped ldm weights on this machine's CPU: the autoencoder's
reconstruction, quality against bicubic and VDSR, the sampler table, and speed against sr3 (PyTorch, and
the whole sampler with its denoiser and decoder on ONNX Runtime). Each part keeps its figures, with the
command that measured them, in docs/results/ldm.json (``parts``); docs/ldm.md is rewritten from the parts
measured so far.

Run: .venv/bin/python -m benchmarks.ldm --part autoencoder|quality|samplers|speed|all
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
from torch.nn.functional import pixel_shuffle, pixel_unshuffle

from benchmarks import harness
from benchmarks.diffusion import CROP, CROPS, cells, crops, metric_fns, sampler_table, score_crops, table, verdict
from benchmarks.harness import REPO, median_seconds
from monai_sr_bundle import methods
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.evaluation import evaluate
from monai_sr_bundle.metrics import PSNRMetric, SSIMMetric
from monai_sr_bundle.networks.ldm import dct_basis
from monai_sr_bundle.onnx_runtime import export_decoder, export_denoiser, onnx_parts
from monai_sr_bundle.weights import load_weights

WORK = REPO / "out" / "benchmark_ldm"
METHOD, PIXEL_METHOD = "ldm", "sr3"
STEPS = 20
#: the reference chain of the sampler table is DDPM over every training step (filled in from the overlay)
FAST_ROWS = [
    ("ddim", 50),
    ("ddim", 20),
    ("ddim", 10),
    ("dpmpp", 20),
    ("dpmpp", 10),
    ("dpmpp_sde", 20),
    ("dpmpp_sde", 10),
]
#: the paper's figures (NIH 64 -> 256, their pretrained natural-image VAE; quoted, not ours)
PAPER = {"bicubic": (29.59, 0.918, 0.347), "latent diffusion": (27.34, 0.865, 0.123)}


def method() -> methods.Method:
    return methods.get(METHOD, 4)


def load(name: str = METHOD, sampler: str | None = None, steps: int | None = None):
    """The shipped network and the inferer that runs it with ``sampler`` in ``steps`` steps, seed 0."""
    predictor = methods.get(name, 4).predictor(sampler=sampler, steps=steps, seed=0)
    return predictor.network, predictor.inferer()


#: (factor, latent channels) of the linear DCT block codes scored beside the trained autoencoder: what a
#: latent of that size keeps before any training, the measure behind the choice of factor 4
BLOCK_CODES = ((4, 4), (4, 8), (8, 8), (8, 32))


def _block_code(image: torch.Tensor, factor: int, channels: int) -> torch.Tensor:
    """``image`` kept to the ``channels`` lowest DCT frequencies of each ``factor`` x ``factor`` block."""
    basis = dct_basis(factor, channels)
    coefficients = torch.einsum("kp,bphw->bkhw", basis, pixel_unshuffle(image, factor))
    return pixel_shuffle(torch.einsum("kp,bkhw->bphw", basis, coefficients), factor)


def part_autoencoder() -> dict:
    """PSNR and SSIM of the autoencoder's reconstruction (posterior mean, decoded) of every test image, and of
    the linear DCT block codes of BLOCK_CODES."""
    autoencoder = load_weights(method().network().autoencoder, method().autoencoder_weights_path).eval()
    codes = {"ldm autoencoder": lambda hr: autoencoder.decode(autoencoder.encode(hr))}
    for factor, channels in BLOCK_CODES:
        codes[f"linear DCT code, factor {factor}, {channels} channels (untrained)"] = partial(
            _block_code, factor=factor, channels=channels
        )
    psnr, ssim, scores = PSNRMetric(), SSIMMetric(), {name: [] for name in codes}
    for item in nih_datalist("test"):
        hr = read_image(item["label"]).as_tensor()[None]
        for name, code in codes.items():
            with torch.inference_mode():
                out = code(hr).clamp(0, 1)
            scores[name].append((float(psnr(out, hr)), float(ssim(out, hr))))
    rows = {
        name: {
            "psnr": statistics.mean(s[0] for s in found),
            "psnr_min": min(s[0] for s in found),
            "ssim": statistics.mean(s[1] for s in found),
        }
        for name, found in scores.items()
    }
    return {
        "images": len(scores["ldm autoencoder"]),
        "rows": rows,
        "factor": autoencoder.factor,
        "latent_channels": autoencoder.latent_channels,
    }


def part_quality(limit: int, sampler: str) -> dict:
    """bicubic, VDSR and one ldm sample per image on the first ``limit`` test images."""
    predictors = {name: methods.get(name, 4).predictor() for name in (methods.baseline_name(), "vdsr")}
    predictors[f"{METHOD} ({sampler} {STEPS}, 1 sample)"] = method().predictor(sampler=sampler, steps=STEPS, seed=0)
    found = evaluate(nih_datalist("test", limit=limit), predictors, WORK / "quality")
    rows = {m: {k: v[0] for k, v in s.items() if k in ("psnr", "ssim", "lpips")} for m, s in found.items()}
    return {"images": limit, "sampler": sampler, "rows": rows}


def sampler_rows() -> list[tuple[str, int]]:
    return [("ddpm", method().network_spec()["args"]["train_steps"]), *FAST_ROWS]


def part_samplers() -> dict:
    """PSNR, SSIM, LPIPS and seconds per crop of each sampler row, seed 0 for every crop."""
    rows, fns, inputs = {}, metric_fns(), crops()
    for sampler, steps in sampler_rows():
        rows[f"{sampler} {steps}"] = score_crops(inputs, *load(METHOD, sampler, steps), fns)
        print(f"{sampler} {steps}: {rows[f'{sampler} {steps}']}", flush=True)
    return rows


def part_speed() -> dict:
    """Seconds for one 512x512 output (a 128x128 LR image) at STEPS steps of each method's default sampler:
    sr3 and ldm on PyTorch, then ldm loaded afresh with its denoiser and decoder on ONNX Runtime, in one run."""
    lr = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(0))

    def seconds(network, inferer) -> float:
        return median_seconds(lambda x: inferer(x, network), lr, 3, warm_up=False)

    rows = {f"{PIXEL_METHOD}, pytorch": seconds(*load(PIXEL_METHOD, steps=STEPS))}
    network, inferer = load(METHOD, steps=STEPS)
    rows[f"{METHOD}, pytorch"] = seconds(network, inferer)
    with tempfile.TemporaryDirectory() as tmp:
        denoiser = export_denoiser(network, Path(tmp) / "denoiser.onnx")
        decoder = export_decoder(network, Path(tmp) / "decoder.onnx")
        rows[f"{METHOD}, onnxruntime"] = seconds(onnx_parts(load(METHOD, steps=STEPS)[0], denoiser, decoder), inferer)
    for row, value in rows.items():
        print(f"{row}: {value:.2f} s", flush=True)
    return {"steps": STEPS, "seconds": rows}


def _autoencoder(a: dict) -> tuple[list[str], list[str]]:
    text = [
        f"The autoencoder alone (factor {a['factor']}, {a['latent_channels']} latent channels): every one of the "
        f"{a['images']} test images encoded (posterior mean) and decoded at 512x512. Beside it, with no training, "
        "the linear code that keeps each block's lowest DCT frequencies (one latent position per block, one "
        "channel per frequency): the autoencoder starts from the factor-4, 8-channel one (`networks/ldm.py`). The "
        "factor-8, 32-channel code has as many latent numbers per pixel (one per two) at a quarter of the "
        "positions; its denoiser would take 64 channels at 64x64 for a 512 image: not tried.",
        "",
        *table(["model", "PSNR (dB)", "min PSNR (dB)", "SSIM"], [
            [name, f"{r['psnr']:.2f}", f"{r['psnr_min']:.2f}", f"{r['ssim']:.4f}"] for name, r in a["rows"].items()
        ]),
    ]  # fmt: skip
    psnr = a["rows"]["ldm autoencoder"]["psnr"]
    return text, [f"- autoencoder reconstruction PSNR {psnr:.2f} dB (bar: >= 40) -> {verdict(psnr >= 40)}"]


def _quality(q: dict) -> tuple[list[str], list[str]]:
    text = [f"First {q['images']} test images, one sample:", ""]
    text += table(["method", "PSNR (dB)", "SSIM", "LPIPS"], [[m, *cells(v)] for m, v in q["rows"].items()])
    text += [
        "",
        "The paper's figures (NIH 64 -> 256 with a pretrained natural-image autoencoder; theirs, not ours):",
        "",
        *table(["method", "PSNR (dB)", "SSIM", "LPIPS"], [[f"{m} (paper)", *map(str, v)] for m, v in PAPER.items()]),
    ]
    ours = next(v for k, v in q["rows"].items() if k.startswith(METHOD))
    vdsr, bicubic = q["rows"]["vdsr"], q["rows"][methods.baseline_name()]
    return text, [
        f"- ldm, one sample at {STEPS} steps: LPIPS {ours['lpips']:.4f} vs VDSR {vdsr['lpips']:.4f} on the same "
        f"{q['images']} images (bar: lower) -> {verdict(ours['lpips'] < vdsr['lpips'], q['images'])}; PSNR "
        f"{ours['psnr']:.2f} dB beside bicubic's {bicubic['psnr']:.2f} dB"
    ]


def _samplers(rows: dict) -> tuple[list[str], list[str]]:
    text = [
        f"{CROPS} fixed inputs: the central {CROP}x{CROP} crop of the first {CROPS} test images, one sample each "
        "(seed 0). `ddim` and `dpmpp` are deterministic given the starting noise, `ddpm` and `dpmpp_sde` draw "
        "fresh noise at every step. The first row is the full chain the denoiser was trained on.",
        "",
    ]
    text += sampler_table(rows, 2)
    span = {k: max(v[k] for v in rows.values()) - min(v[k] for v in rows.values()) for k in ("psnr", "lpips")}
    text += [
        "",
        f"Across the rows PSNR spans {span['psnr']:.2f} dB and LPIPS {span['lpips']:.4f}: where the rows hardly "
        "differ, the denoiser's estimate is set by its condition (the LR latent) more than by the noise it starts "
        "from, so the sampler and the step count change little but the time.",
    ]
    return text, []


def _speed(s: dict) -> tuple[list[str], list[str]]:
    seconds = s["seconds"]
    text = [f"One 128x128 LR image to a 512x512 output, {s['steps']} steps, median of 3 runs, in one process.", ""]
    text += table(["method, runtime", "seconds per image"], [[k, f"{v:.2f}"] for k, v in seconds.items()])
    speedup = seconds[f"{PIXEL_METHOD}, pytorch"] / seconds[f"{METHOD}, pytorch"]
    ratio = seconds[f"{METHOD}, pytorch"] / seconds[f"{METHOD}, onnxruntime"]
    return text, [
        f"- ldm vs sr3 at {s['steps']} steps, PyTorch: {speedup:.1f}x faster (bar: >= 5x) -> {verdict(speedup >= 5)}",
        f"- ldm's whole sampler on ONNX Runtime (denoiser and decoder) vs PyTorch: {ratio:.2f}x (reported)",
    ]


#: part -> (section title, its text and bars from the part's figures)
SECTIONS = {
    "autoencoder": ("The autoencoder", _autoencoder),
    "quality": ("Quality", _quality),
    "samplers": ("Samplers", _samplers),
    "speed": ("Speed", _speed),
}


def write_doc(parts: dict) -> None:
    """docs/ldm.md from the parts measured so far; a part not measured yet says so."""
    args = method().network_spec()["args"]
    denoiser = sum(p.numel() for p in method().network().denoiser.parameters()) if method().weights_available else None
    out = [
        "# Latent-diffusion SR (ldm): autoencoder, quality, samplers, speed",
        "",
        "NIH ChestX-ray14 test split, x4, HR = the 512x512 PNGs, LR = antialiased bicubic x4. The shipped",
        "`ldm_cxr_x4.pt` weights (autoencoder and denoiser; `monai_sr_bundle/models/weights.json` says how each",
        f"stage was trained); seed 0. The denoiser has {denoiser:,} parameters (the paper's U-Net-lite: 813k),"
        if denoiser
        else "Not trained yet.",
        f"widths {args['channels']}, on {args['autoencoder']['latent_channels']} latent channels plus as many of the"
        f" encoded LR; {args['train_steps']} training steps. Each part re-runs with the command under its title"
        " (from the repository root, on this 2-core CPU).",
        "",
    ]
    text, bars = harness.render_parts(parts, SECTIONS)
    out += [
        *text,
        "## Your own site",
        "",
        "The evaluate config scores any folder of HR images the same way (degraded x4, super-resolved, PSNR / "
        "SSIM / LPIPS per image in `metrics.csv`), e.g. an external hospital's radiographs:",
        "",
        "    cd monai_sr_bundle && python -m monai.bundle run --config_file "
        "\"['configs/inference.json','configs/evaluate.json']\" --method ldm --input <folder> --output_dir <out>",
        "",
        "Bars of issue 15:",
        *bars,
        "",
    ]
    (REPO / "docs" / "ldm.md").write_text("\n".join(out))
    print("\n".join(bars))


def main() -> int:
    parser = harness.parser(__file__, __doc__, work=False)
    parser.add_argument("--part", choices=[*SECTIONS, "all", "doc"], default="all")
    parser.add_argument("--limit", type=int, default=116, help="test images of the quality part (default: all 116)")
    parser.add_argument("--sampler", default=None, help="sampler of the quality part (default: ldm's)")
    args = harness.parse(parser)
    args.sampler = args.sampler or method().network_spec()["args"]["sampler"]
    needed = method().autoencoder_weights_path if args.part == "autoencoder" else method().weights_path
    if args.part != "doc" and not needed.is_file():
        print(f"no shipped {METHOD} weights ({needed.name}); train them first", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    parts = {
        "autoencoder": part_autoencoder,
        "quality": lambda: part_quality(args.limit, args.sampler),
        "samplers": part_samplers,
        "speed": part_speed,
    }
    data = "NIH ChestX-ray14 test split, x4 (LR antialiased bicubic)"
    write_doc(harness.run_parts(args, parts, data, [methods.get(METHOD, 4)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
