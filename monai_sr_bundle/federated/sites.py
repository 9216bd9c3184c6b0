"""A federation's sites: each hospital's own data, described by a site config that stays at the site.

A site config is a small JSON file on the site's machine::

    {"datalist": "cxr_site-1.json", "data_dir": "${MONAI_SR_DATA}/nih_cxr14/images_512"}

``datalist`` is a decathlon-style datalist (``training`` and ``validation`` lists of ``{"label": <HR image>,
"boxes": [...]}``), relative to the config's folder; ``data_dir`` is where its relative image paths start
(default: the datalist's folder), with ``$VARS`` expanded and ``MONAI_SR_DATA`` defaulting to the shared
data folder. The client finds the config through ``--site_config`` or, in production, the site's own
``MONAI_SR_SITE_CONFIG`` environment variable, so a job carries no site paths at all.

A site with several GPUs adds ``"processes": N``: each round's local training then runs in N processes
started by torchrun, one per GPU (NCCL; gloo processes sharing the cores on a machine without GPUs), with the
batch split between them, as the bundle's ``configs/multi_gpu_train.json`` trains.

``python -m monai_sr_bundle.federated.sites --out configs/federated/sites`` writes the example sites: three
chest X-ray sites that split the NIH train and val patients, and two chest CT sites built from the DICOM
slices under ``chest_ct``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from string import Template

from monai_sr_bundle.data.datalist import load_datalist, nih_datalist
from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.jsonfile import Kind, check_object, read_json_object, text, whole

SITE_CONFIG_ENV = "MONAI_SR_SITE_CONFIG"


@dataclass
class SiteData:
    """A site's validated data: its name, datalist file and the folder relative image paths start from."""

    site: str
    datalist: Path
    data_dir: Path
    training: list[dict]
    validation: list[dict]
    processes: int = 1


#: the most training processes a site config may ask for (one per GPU of the site's machine)
MAX_PROCESSES = 64
#: what a site config says (:func:`~monai_sr_bundle.jsonfile.check_object`'s schema; other keys are the site's)
SITE_CONFIG = {
    "datalist": text("a path"),
    "data_dir": Kind("a folder's path", lambda v: isinstance(v, str)).or_null(),  # empty: the datalist's folder
    "processes": whole(1, MAX_PROCESSES, "one per GPU"),
}


def _config(site: str, config_path: str | os.PathLike | None) -> tuple[Path, dict]:
    path = config_path or os.environ.get(SITE_CONFIG_ENV)
    if not path:
        raise InputError(
            f"site {site}: no site config; pass --site_config or set {SITE_CONFIG_ENV} on the site's machine."
        )
    path = Path(path)
    what = f"site {site}: its site config {path}"
    return path, check_object(read_json_object(path, what), what, SITE_CONFIG, ("datalist",), others=True)


def _expand(value: str) -> str:
    """``$VARS`` and ``~`` expanded; ``MONAI_SR_DATA`` defaults to the shared data folder."""
    return os.path.expanduser(Template(value).safe_substitute({"MONAI_SR_DATA": str(shared_data_dir()), **os.environ}))


def load_site(site: str, config_path: str | os.PathLike | None = None) -> SiteData:
    """Read and check ``site``'s config (``config_path``, else ``$MONAI_SR_SITE_CONFIG``): both lists must
    hold at least one item, every image must be a readable file and ``processes`` a whole number. Every error
    names the site."""
    path, config = _config(site, config_path)
    datalist = (path.parent / _expand(config["datalist"])).resolve()
    data_dir = Path(_expand(config["data_dir"])) if config.get("data_dir") else datalist.parent
    lists = {}
    for key in ("training", "validation"):
        try:
            lists[key] = load_datalist(datalist, key, base_dir=data_dir, skip_missing=False)  # refused below
        except InputError as e:
            raise InputError(f"site {site}: {e}") from e
        missing = [
            d["label"] for d in lists[key] if not (os.path.isfile(d["label"]) and os.access(d["label"], os.R_OK))
        ]
        if missing:
            raise InputError(
                f"site {site}: {len(missing)} {key} image(s) of {datalist} are missing or unreadable, e.g. "
                f"{missing[0]}."
            )
    processes = config.get("processes", 1)
    fewest = min(lists.values(), key=len)
    if processes > len(fewest):
        raise InputError(
            f"site {site}: 'processes' {processes} in {path} but {len(fewest)} "
            f"{'training' if fewest is lists['training'] else 'validation'} image(s): every process needs at "
            f"least one; ask for at most {len(fewest)}."
        )
    return SiteData(site, datalist, data_dir, lists["training"], lists["validation"], processes)


def balanced_patient_split(items: list[dict], n_sites: int) -> list[list[dict]]:
    """Split ``items`` into ``n_sites`` groups by ``patient_id`` (no patient in two groups), largest patients
    first onto the site with the fewest images, so the sites get about the same number of images."""
    by_patient = defaultdict(list)
    for d in items:
        by_patient[d["patient_id"]].append(d)
    groups: list[list[dict]] = [[] for _ in range(n_sites)]
    for patient in sorted(by_patient, key=lambda p: (-len(by_patient[p]), p)):
        min(groups, key=len).extend(by_patient[patient])
    return groups


def _write_site(out: Path, site: str, datalist: dict, data_dir: str, note: str) -> None:
    (out / f"{site}_datalist.json").write_text(json.dumps({"description": note, **datalist}, indent=1) + "\n")
    config = {"datalist": f"{site}_datalist.json", "data_dir": data_dir}
    (out / f"{site}.json").write_text(json.dumps(config, indent=2) + "\n")


def write_example_sites(out: str | os.PathLike, n_cxr_sites: int = 3) -> list[str]:
    """Write the example site configs and datalists to ``out``; returns the site names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {s: balanced_patient_split(nih_datalist(s), n_cxr_sites) for s in ("train", "val")}
    names = []
    for i in range(n_cxr_sites):
        site = f"cxr-site-{i + 1}"
        lists = {
            key: [
                {"label": Path(d["label"]).name, "boxes": [[round(v, 2) for v in b] for b in d["boxes"]]}
                for d in splits[split][i]
            ]
            for key, split in (("training", "train"), ("validation", "val"))
        }
        note = (
            f"NIH ChestX-ray14 train and val splits, patients partitioned over {n_cxr_sites} sites; "
            f"this is site {i + 1}"
        )
        _write_site(out, site, lists, "${MONAI_SR_DATA}/nih_cxr14/images_512", note)
        names.append(site)
    ct_root = shared_data_dir() / "chest_ct"
    ct_site_2 = sorted((ct_root / "dcmqi_ct3slice").iterdir()) + sorted((ct_root / "lungmask_testdata").iterdir())
    ct_files = {"ct-site-1": sorted((ct_root / "totalsegmentator_example_ct_dicom").iterdir()), "ct-site-2": ct_site_2}
    for site, files in ct_files.items():
        rel = [str(f.relative_to(ct_root)) for f in files if f.is_file()]
        n_val = max(1, len(rel) // 5)
        lists = {"training": [{"label": r} for r in rel[:-n_val]], "validation": [{"label": r} for r in rel[-n_val:]]}
        note = "axial chest CT slices (one DICOM file each), the last ones of the site validating"
        _write_site(out, site, lists, "${MONAI_SR_DATA}/chest_ct", note)
        names.append(site)
    return names


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--out", default="configs/federated/sites")
    print("wrote sites:", ", ".join(write_example_sites(cli.parse_args().out)))
