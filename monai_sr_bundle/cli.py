"""Command line: ``monai-sr sr`` super-resolves files; ``monai-sr demo`` compares the methods on real images;
``monai-sr methods`` lists the methods; ``monai-sr worker`` serves 3D Slicer's local mode; ``monai-sr
ct-slices`` prepares the chest CT training data; ``monai-sr export-zoo`` writes a method as a MONAI model-zoo
bundle.

They go through the same entry points as the bundle configs (:mod:`monai_sr_bundle.methods`,
:mod:`monai_sr_bundle.inference`, :mod:`monai_sr_bundle.evaluation`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from monai_sr_bundle import card, methods
from monai_sr_bundle.data.public import BUILDERS, VAL_FRACTION
from monai_sr_bundle.errors import InputError, printable
from monai_sr_bundle.limits import MAX_OUTPUT_MP

DEMO_LIMIT = 3
#: images the demo's diffusion methods sample (each image costs them seconds of CPU per sampler step)
DEMO_SAMPLED = 1


def _interactive() -> bool:
    """Progress bars only on a terminal: in logs and pipes they bury the one-line error messages."""
    return sys.stderr.isatty()


#: the exit status of a run where some inputs failed and the others were written
PARTIAL = 3


def _loading() -> tuple[float, float, float] | None:
    """Say once that the libraries are loading, before the commands that need them import them: PyTorch and
    MONAI take seconds (a quarter of a minute on a busy machine), which would otherwise pass in silence.
    Returns :func:`_cpu_use` now, for :func:`_fit_threads` once they are loaded; None when they are loaded
    already (a call in a process that has them: nothing to wait for, nothing to measure)."""
    if "monai" in sys.modules:
        return None
    print("monai-sr: loading PyTorch and MONAI ...", file=sys.stderr, flush=True)
    return _cpu_use()


def _cpu_use() -> tuple[float, float, float] | None:
    """(clock s, CPU s of the whole machine, CPU s of this process) now; None without Linux's /proc/stat."""
    try:
        with open("/proc/stat") as f:
            jiffies = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    own = os.times()
    busy = sum(jiffies) - jiffies[3] - jiffies[4]  # all but idle and iowait
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def _fit_threads(since: tuple[float, float, float] | None) -> None:
    """PyTorch's threads cut to the cores other programs left free while the libraries loaded: a thread more
    than the free cores makes every operation wait for a core another program holds (the demo beside one busy
    core of two: 2.5x its idle time on 2 threads, 1.3x on 1). Only where the user has not chosen
    (``OMP_NUM_THREADS``; torchrun sets it too) and the loading took long enough to tell."""
    now = _cpu_use()
    if since is None or now is None or "OMP_NUM_THREADS" in os.environ or now[0] - since[0] < 1:
        return
    import torch

    others = max(0.0, (now[1] - since[1]) - (now[2] - since[2])) / (now[0] - since[0])
    free = max(1, round(len(os.sched_getaffinity(0)) - others))
    if free < torch.get_num_threads():
        torch.set_num_threads(free)
        print(
            f"monai-sr: other programs keep {others:.1f} cores busy: running on {free} thread(s) "
            "(OMP_NUM_THREADS=N chooses)",
            file=sys.stderr,
            flush=True,
        )


def _sr(args: argparse.Namespace) -> int:
    since = _loading()
    from monai_sr_bundle import distributed
    from monai_sr_bundle.batch import PartialFailure, run_inference
    from monai_sr_bundle.data.readers import ITK_SUFFIXES, PNG_SUFFIXES
    from monai_sr_bundle.inference import Predictor, check_device
    from monai_sr_bundle.request import SRRequest

    _fit_threads(since)

    # an output named like an image (``-o x.png``, or argparse reading ``-o.png`` as ``-o .png``) is a mistake
    out = Path(args.output)
    if out.name.lower().endswith(PNG_SUFFIXES + ITK_SUFFIXES + (".dcm", ".dicom")) and not os.path.isdir(out):
        raise InputError(
            f"{args.output}: -o takes an output folder, not an image file name; for an input named like '-o.png', "
            "put it after '--' or write it as './-o.png'."
        )
    if not args.inputs and not args.datalist:
        raise InputError("give input images, folders or --datalist FILE to super-resolve.")
    method = methods.for_request(args.method, args.scale, args.modality)
    request = Predictor.check(method, SRRequest.of(vars(args)))  # before the weights load
    device = check_device(args.device)
    torchrun = distributed.launched_processes() > 1  # each process takes every N-th input
    if torchrun:
        distributed.setup()
    device = distributed.local_device() if torchrun and device == "cuda" else device  # a GPU per process
    try:
        predictor = method.predictor(
            args.weights, device, args.tile_size, request.precision, args.compile, runtime=request.runtime
        )
        written = run_inference(
            args.inputs,
            predictor,
            args.output,
            allow_volume=args.slice_by_slice,
            progress=_interactive(),
            output_format=args.output_format,
            recursive=args.recursive,
            skip_existing=args.skip_existing,
            workers=args.workers,
            datalist=args.datalist,
            request=request,
        )
    except PartialFailure as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return PARTIAL
    finally:
        distributed.teardown(wait=sys.exc_info()[0] is None)  # an exception on its way out: leave at once
    print(f"wrote {len(written)} image(s) to {args.output}")
    return 0


def demo_datalist(inputs: list[str] | None, limit: int) -> tuple[list[dict], str]:
    """The demo's HR references: the user's files, else the NIH test split, else pydicom's chest CT slice."""
    from monai_sr_bundle.batch import default_input
    from monai_sr_bundle.data.datalist import nih_datalist
    from monai_sr_bundle.data.paths import shared_data_dir
    from monai_sr_bundle.data.readers import expand_inputs

    if inputs:
        return [{"label": p} for p in expand_inputs(inputs)], "your files"
    if (shared_data_dir() / "nih_cxr14" / "images.csv").is_file():
        return nih_datalist("test", limit=limit), f"the first {limit} NIH ChestX-ray14 test images"
    return [{"label": default_input()}], "pydicom's CT_small.dcm chest CT slice (no ../shared/data found)"


def _demo(args: argparse.Namespace) -> None:
    since = _loading()
    from monai_sr_bundle.evaluation import evaluate
    from monai_sr_bundle.imagenet import default_weights_path
    from monai_sr_bundle.inference import check_device
    from monai_sr_bundle.results import format_table

    _fit_threads(since)

    device = check_device(args.device)
    datalist, source = demo_datalist(args.inputs, args.limit)
    predictors = {}
    for name in args.methods.split(",") if args.methods else methods.names():
        try:
            method = methods.get(name, args.scale, args.modality)
            predictors[name] = method.predictor(device=device, runtime=args.runtime)
        except InputError as e:
            logging.warning("skipping %s: %s", name, e)
    if not predictors:
        raise InputError(f"none of the methods {args.methods!r} could be loaded.")
    lpips = args.lpips and default_weights_path().is_file()
    if args.lpips and not lpips:
        logging.warning("LPIPS skipped: %s not found (set MONAI_SR_DATA)", default_weights_path())
    how = f"degradation preset {args.degradation}" if args.degradation else "antialiased bicubic downsampling"
    sampled = None if args.all else args.sampled_images
    print(f"demo: x{args.scale} SR of {source}, LR made by {how}")
    if sampled is not None and any(p.method.stochastic for p in predictors.values()):
        first = "image" if sampled == 1 else f"{sampled} images"
        print(f"demo: the diffusion methods on the first {first} only (--all: on every one)")
    evaluate(
        datalist,
        predictors,
        args.output,
        degradation=args.degradation,
        lpips=lpips,
        save_images=True,
        figures=args.figures,
        progress=_interactive(),
        samples=args.samples,
        sampled_images=sampled,
    )
    info = json.loads((Path(args.output) / "summary.json").read_text())  # the images each method was scored on
    print(format_table(info["summary"], info["images_per_method"]))
    print(f"SR images, figures and metrics (metrics.csv, summary.md) are in {Path(args.output).resolve()}")
    print(f"open {(Path(args.output) / 'report.html').resolve().as_uri()} in a browser to compare them")


def _methods(args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(card.describe_all(args.scale, args.modality), indent=2))
    elif args.networks:
        print(card.networks_table(args.scale, args.modality))
    else:
        print(card.markdown_table(args.scale, args.modality))


def _config(args: argparse.Namespace) -> None:
    from monai_sr_bundle.stages import resolved_config

    method = methods.get(args.method, args.scale, args.modality)
    print(json.dumps(resolved_config(method, args.stage), indent=2))  # a stage it does not have: one sentence


def _worker(args: argparse.Namespace) -> int:
    from monai_sr_bundle.worker import serve

    status = serve()
    logging.shutdown()
    sys.stdout.flush()  # the log (the worker's stdout is its stderr), as is stderr
    sys.stderr.flush()
    os._exit(status)  # not the interpreter's teardown of torch, seconds long: Slicer waits for this exit


def _ct_slices(args: argparse.Namespace) -> None:
    from monai_sr_bundle.data.ct import write_ct_datalist

    print(write_ct_datalist(args.output, args.data_dir))


def _nih_resize(args: argparse.Namespace) -> None:
    from monai_sr_bundle.data.datalist import write_nih_resized

    print(write_nih_resized(args.output, args.size, args.data_dir))


def _datalist(args: argparse.Namespace) -> None:
    from monai_sr_bundle.data.datalist import write_datalist
    from monai_sr_bundle.data.public import build_datalist

    output = Path(args.output)
    if output.suffix != ".json" or output.is_dir():
        raise InputError(f"{output}: give the datalist file to write, ending in .json.")
    datalist = build_datalist(args.dataset, args.root, args.val_fraction)
    written = write_datalist(output.parent, datalist, output.name)
    counts = ", ".join(f"{k} {len(datalist[k])}" for k in ("training", "validation", "test") if k in datalist)
    missing = sum(len(v) for v in datalist["missing"].values())
    print(
        f"{written}: {counts} images" + (f"; {missing} named by the set but missing, listed there" if missing else "")
    )


def _interpolate(args: argparse.Namespace) -> None:
    from monai_sr_bundle.pretrained import interpolate_weights

    digest = interpolate_weights(
        args.method, args.psnr_weights, args.gan_weights, args.alpha, args.output, args.scale, args.modality
    )
    print(f"{args.output} (sha256 {digest}); provenance in {Path(args.output).parent / 'weights.json'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monai-sr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scale", type=int, default=4, help="SR factor (default 4)")
        p.add_argument("--modality", default="cxr", help="weights family: models/<method>_<modality>_x<scale>.pt")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (a GPU if there is one)")

    def runtime(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--runtime",
            default="auto",
            help="what runs the networks: auto (the fastest installed: OpenVINO, then ONNX Runtime on a CPU; "
            "PyTorch on a GPU), torch, openvino or onnxruntime (exported once, cached in ~/.cache/monai-sr)",
        )

    sr = sub.add_parser("sr", help="super-resolve images (PNG/JPEG, DICOM, NIfTI/NRRD/MHA) into a folder")
    sr.add_argument(
        "inputs",
        nargs="*",
        help="files, image folders or DICOM series folders (a name starting with '-' goes after '--', or as ./-name)",
    )
    sr.add_argument("-o", "--output", required=True, help="output folder (inputs are never overwritten)")
    sr.add_argument("-m", "--method", help=f"one of {', '.join(methods.names())} (default {methods.default_name()})")
    sr.add_argument("--weights", help="a state dict to use instead of the shipped weights")
    sr.add_argument(
        "--output-format",
        choices=["dicom", "nifti", "nrrd", "mha", "png"],
        help="default: the input's family (a DICOM input gives a derived DICOM series of its study)",
    )
    sr.add_argument(
        "--tile-size",
        type=int,
        help="LR tile edge for bounded memory (default: the method's, 256 for most; on an engine an image up to "
        "512 px runs whole)",
    )
    sr.add_argument(
        "--noise-level",
        help="degradation-aware methods: the input's noise in grey levels of 255, 0 (clean: keep every detail) to "
        "50 (smooth hard); default 'auto', estimated from each image",
    )
    sr.add_argument(
        "--slice-by-slice", action="store_true", help="accept CT volumes and super-resolve each axial slice"
    )
    sr.add_argument("--seed", type=int, help="stochastic methods: seed of the sampler's noise (same seed, same bytes)")
    sr.add_argument("--steps", type=int, help="stochastic methods: sampler steps (default: the method's)")
    sr.add_argument(
        "--sampler",
        help="stochastic methods: ddpm, ddim, dpmpp (DPM-Solver++) or dpmpp_sde (its stochastic form); "
        "default: the method's",
    )
    sr.add_argument(
        "--samples",
        type=int,
        help="stochastic methods: draws per image; above 1 the SR is their mean and std and LR-consistency "
        "maps are written beside it",
    )
    sr.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="the network's arithmetic: auto (bf16 on an engine where the CPU has native bf16, else fp32), fp32, "
        "bf16 (OpenVINO, or PyTorch autocast) or fp16 (GPU only)",
    )
    sr.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (a sampler's denoiser, with CUDA graphs on a GPU); worth it for many images",
    )
    sr.add_argument("--recursive", action="store_true", help="walk folder inputs; outputs keep their subfolders")
    sr.add_argument("--datalist", help="a datalist file: its images, outputs under their paths relative to each other")
    sr.add_argument(
        "--skip-existing", action="store_true", help="leave out inputs whose outputs are complete (resume a run)"
    )
    sr.add_argument(
        "--workers", type=int, default=1, help="processes that super-resolve at once, sharing the cores (default 1)"
    )
    sr.add_argument(
        "--max-output-mp",
        type=float,
        default=MAX_OUTPUT_MP,
        help=f"largest SR image in megapixels (default {MAX_OUTPUT_MP}: about 2.4 GB of memory), checked from each "
        "input's header; a larger one is refused",
    )
    common(sr)
    runtime(sr)
    sr.set_defaults(func=_sr)

    demo = sub.add_parser("demo", help="degrade real HR images, super-resolve them with each method, compare")
    demo.add_argument(
        "--input", dest="inputs", nargs="*", help="your own HR images or folders (default: NIH test images)"
    )
    demo.add_argument("-o", "--output", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--methods", help="comma-separated methods (default: all that have weights)")
    demo.add_argument("--limit", type=int, default=DEMO_LIMIT, help=f"NIH test images to use (default {DEMO_LIMIT})")
    demo.add_argument("--figures", type=int, default=3, help="side-by-side figures to write (default 3)")
    demo.add_argument(
        "--sampled-images",
        type=int,
        default=DEMO_SAMPLED,
        help=f"images the diffusion methods run on, the first ones (default {DEMO_SAMPLED}; --all: every image)",
    )
    demo.add_argument(
        "--all", action="store_true", help="every image for every method (minutes per image on a CPU for diffusion)"
    )
    demo.add_argument(
        "--samples",
        type=int,
        help="draws per image of the diffusion methods: above 1 they are scored on the mean and their figures show "
        "the samples' spread and LR-consistency",
    )
    demo.add_argument("--no-lpips", dest="lpips", action="store_false", help="skip LPIPS (needs the shared weights)")
    demo.add_argument(
        "--degradation",
        help="LR synthesis preset (configs/degradations), e.g. adsr_artifacts_x4: text, circles and lines burnt into "
        "the LR to show artifact removal (default: antialiased bicubic)",
    )
    common(demo)
    runtime(demo)
    demo.set_defaults(func=_demo)

    listing = sub.add_parser("methods", help="list the methods: family, trainable, stochastic, ONNX export, weights")
    listing.add_argument("--json", action="store_true", help="as JSON, for programs (3D Slicer asks this)")
    listing.add_argument("--networks", action="store_true", help="each method's network in words and its size")
    common(listing)
    listing.set_defaults(func=_methods)

    config = sub.add_parser("config", help="a method's config for one stage, merged from its files, as a run uses it")
    config.add_argument("method", help=f"one of {', '.join(methods.names())}")
    config.add_argument("--stage", default="inference", help="inference (default) or a training stage of the method")
    common(config)
    config.set_defaults(func=_config)

    worker = sub.add_parser(
        "worker", help="answer SR requests (JSON lines on stdin) keeping the method loaded: 3D Slicer's local mode"
    )
    worker.set_defaults(func=_worker)

    ct = sub.add_parser("ct-slices", help="cut the shared chest CT into axial slices and a datalist, split by patient")
    ct.add_argument("-o", "--output", required=True, help="folder for the slices and datalist.json")
    ct.add_argument("--data-dir", help="the chest_ct folder (default: <shared data>/chest_ct)")
    ct.set_defaults(func=_ct_slices)

    nih = sub.add_parser("nih-resize", help="the NIH splits at another HR size (e.g. 256), with a datalist")
    nih.add_argument("--size", type=int, required=True, help="image side in pixels, at most 512")
    nih.add_argument("-o", "--output", required=True, help="folder for the images and datalist.json")
    nih.add_argument("--data-dir", help="the nih_cxr14 folder (default: <shared data>/nih_cxr14)")
    nih.set_defaults(func=_nih_resize)

    public = sub.add_parser("datalist", help="a datalist of a public chest X-ray set from its download folder")
    public.add_argument("dataset", choices=sorted(BUILDERS), help="the set, laid out as it is distributed")
    public.add_argument("root", help="the folder the set was unpacked into")
    public.add_argument("-o", "--output", required=True, help="the datalist file to write (.json)")
    public.add_argument(
        "--val-fraction", type=float, default=VAL_FRACTION,
        help=f"share of training patients held out for validation where the set has no validation split "
        f"(default {VAL_FRACTION})",
    )  # fmt: skip
    public.set_defaults(func=_datalist)

    blend = sub.add_parser("interpolate", help="blend a method's PSNR-trained and GAN-trained weights (ESRGAN)")
    blend.add_argument("psnr_weights", help="the PSNR-trained (pre-training) weights")
    blend.add_argument("gan_weights", help="the GAN-trained weights")
    blend.add_argument("--alpha", type=float, required=True, help="share of the PSNR weights, 0 to 1")
    blend.add_argument("-m", "--method", required=True, help="the method both weights belong to")
    blend.add_argument("-o", "--output", required=True, help="the blended weights file (weights.json beside it)")
    blend.add_argument("--scale", type=int, default=4, help="SR factor of both weights (default 4)")
    blend.add_argument("--modality", default="cxr", help="weights family of both (default cxr)")
    blend.set_defaults(func=_interpolate)

    pre = sub.add_parser(
        "pretrained", help="convert published SR weights (Real-ESRGAN compact: ncnn .param/.bin or BasicSR .pth)"
    )
    pre.add_argument("source", help="the ncnn .param file (its .bin beside it) or the .pth file")
    pre.add_argument("bin", nargs="?", help="the ncnn .bin file, when not beside the .param")
    pre.add_argument("-m", "--method", required=True, help="the method whose network takes them, e.g. realesrgan")
    pre.add_argument("-o", "--output", required=True, help="the weights file to write (weights.json beside it)")
    pre.set_defaults(func=_pretrained)

    export = sub.add_parser("export-zoo", help="a method as a self-contained MONAI model-zoo bundle folder")
    export.add_argument("-m", "--method", required=True, help="a method with shipped weights")
    export.add_argument("-o", "--out", required=True, help="folder that receives the bundle folder")
    export.add_argument("--scale", type=int, default=4, help="SR factor of the weights (default 4)")
    export.add_argument("--modality", default="cxr", help="weights family (default cxr)")
    export.add_argument("--weights-url", default="", help="where models/model.pt is published (large_files.yml)")
    export.add_argument(
        "--results", help="benchmark results file (JSON) with the method's row (default: docs/results/)"
    )
    export.set_defaults(func=_export_zoo)
    return parser


def _pretrained(args: argparse.Namespace) -> None:
    from monai_sr_bundle.pretrained import convert

    digest = convert(args.source, args.method, args.output, args.bin)
    print(f"wrote {args.output} (sha256 {digest}); its source and licence are in weights.json beside it")


def _export_zoo(args: argparse.Namespace) -> None:
    from monai_sr_bundle import zoo

    bundle = zoo.export(args.method, args.out, args.modality, args.scale, args.weights_url, args.results)
    print(f"wrote {bundle}; the zoo's CI on it: python -m tools.zoo_ci {bundle} <the zoo's CI folder>")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)  # the help lists the methods: a broken overlay is reported here
        return args.func(args) or 0
    except InputError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
