"""Every method with shipped weights as a MONAI model-zoo bundle, through the zoo's own CI.

For each (method, modality) with weights: ``monai-sr export-zoo``, then :func:`tools.zoo_ci.check`
(``ci/verify_bundle.py -m full``, the pre-commit hooks, isort, black, flake8 with the zoo's settings) and
:func:`tools.zoo_ci.check_workflows` (inference, evaluate and every training stage with MONAI's
property check, monai-sr unimportable), and the exported inference against the development bundle's, bit
for bit. Writes the table into docs/zoo.md (between its ``sweep`` markers) and prints it.
Run: .venv/bin/python -m benchmarks.zoo   (about 12 min on a 2-core CPU)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from subprocess import CalledProcessError

import numpy as np
from PIL import Image

from benchmarks import harness
from benchmarks.harness import REPO, write_block
from monai_sr_bundle import methods, zoo
from monai_sr_bundle.constants import MODALITIES
from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.errors import InputError
from tools import zoo_ci

DOC = REPO / "docs" / "zoo.md"
MARKERS = ("<!-- sweep: start -->", "<!-- sweep: end -->")
ZOO_CI = REPO.parent / "shared" / "tools" / "model-zoo-ci"


def same_output(ours: Path, theirs: Path) -> bool:
    if ours.suffix == ".png":
        return np.array_equal(np.asarray(Image.open(ours)), np.asarray(Image.open(theirs)))
    import pydicom

    return np.array_equal(pydicom.dcmread(ours).pixel_array, pydicom.dcmread(theirs).pixel_array)


def main(argv: list[str] | None = None) -> int:
    args = harness.parse(harness.parser(__file__, __doc__, work=False), argv)
    data = shared_data_dir()
    rows, used, begun = [], [], time.perf_counter()
    for modality in MODALITIES:
        for name in methods.names():
            method = methods.get(name, 4, modality)
            if not method.weights_available:
                continue
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as work:
                work = Path(work)
                try:
                    bundle = zoo.export(name, work / "dist", modality=modality)
                    torchscript = "scripted" if zoo.scriptable(bundle) else "excluded (not scriptable)"
                    steps = zoo_ci.check(bundle, ZOO_CI, work / "ci")
                    image, nih = zoo_ci.workflow_data(data / "nih_cxr14", work / "data", modality)
                    runs = zoo_ci.check_workflows(bundle, ZOO_CI, image, nih, work / "run", data / "weights")
                    theirs = next((work / "run" / "infer").glob(f"{image.stem}_sr*"))
                    ours = zoo_ci.dev_inference(method, image, work / "dev", 2 if method.stochastic else None)
                    same = same_output(ours, theirs)
                    result = ("yes" if same else "NO", f"{len(steps)} passed", f"{len(runs)} passed", "")
                except (InputError, CalledProcessError) as e:
                    result, torchscript = ("-", "-", "-", str(e).splitlines()[0][:200]), "-"
                rows.append((name, modality, zoo.bundle_name(method), *result[1:3], torchscript, result[0], result[3]))
                used.append(method)
            print(rows[-1], f"{time.perf_counter() - start:.0f} s", flush=True)
    table = (
        "| method | modality | bundle | zoo CI steps | workflows | TorchScript | same output as dev | failure |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join("| " + " | ".join(row) + " |" for row in rows)
    )
    keys = ("method", "modality", "zoo_ci_steps", "workflows", "torchscript", "same_output_as_dev", "failure")
    bundles = {bundle: dict(zip(keys, (name, modality, *rest))) for name, modality, bundle, *rest in rows}
    data = "every shipped weights file, exported; workflows on 2 NIH images per split made 128 px"
    harness.record(args, data, used, {"main": bundles}, (time.perf_counter() - begun) / 60)
    command = f".venv/bin/{args.command}"
    block = f"{MARKERS[0]}\nProduced by `{command}` ({time.strftime('%Y-%m-%d')}, 2-core CPU):\n\n{table}\n{MARKERS[1]}"
    write_block(DOC, MARKERS, block)
    print(table)
    return 0 if all(row[-1] == "" and row[-2] == "yes" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
