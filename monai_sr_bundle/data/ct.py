"""Chest CT for in-plane SR: the shared chest CT cut into axial slices (one-slice NIfTI files in HU, geometry
kept), split by patient, and listed in a datalist file that the train config reads (``datalist_file``).

Each source is one patient, so no patient is in two splits (the data README's rule): training, two whole
volumes of two vendors (GE, Philips); validation, a third patient (the 20-slice Siemens DICOM series,
lower chest); test, the third volume (Siemens, another kernel) and the three GE slices of a fifth patient.
The two-slice ``lungmask_testdata`` is left out: it comes from an LIDC-IDRI patient whose identity was
removed, possibly a training patient.

Run ``monai-sr ct-slices -o <folder>``; it prints the datalist path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from monai.data import MetaTensor

from monai_sr_bundle.constants import MODALITIES
from monai_sr_bundle.data.datalist import write_datalist
from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.data.writers import write_image
from monai_sr_bundle.errors import InputError

#: HU window of the chest CT weights (lung to soft tissue and contrast), the CT modality's map
CT_WINDOW = MODALITIES["ct"]
#: datalist key -> sources under ``chest_ct/`` (a volume file or a DICOM series folder), one patient each
CT_SPLIT = {
    "training": ("volumes/lidc_idri_0001.nii.gz", "volumes/lung_pet_ct_dx_a0001_5mm.nii.gz"),
    "validation": ("totalsegmentator_example_ct_dicom",),
    "test": ("volumes/lung_pet_ct_dx_a0002_8mm_b40f.nii.gz", "dcmqi_ct3slice"),
}


def _stem(source: str) -> str:
    name = Path(source).name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name


def write_slices(source: str | os.PathLike, out_dir: str | os.PathLike, window=CT_WINDOW) -> list[Path]:
    """Write each axial slice of the volume or DICOM series ``source`` to ``out_dir`` as a one-slice int16
    NIfTI in HU clipped to ``window`` (the window clips again when the slice is read for training, so
    nothing the model sees is lost); each file keeps its slice's position and orientation."""
    volume = read_image(source, intensity=window)  # (1, X, Y, Z) in [0, 1] over the window
    if volume.ndim != 4:
        raise InputError(
            f"{source}: expected a CT volume or series of several slices, got shape {tuple(volume.shape)}."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    affine = volume.affine.clone()
    paths = []
    for k in range(volume.shape[-1]):
        slice_affine = affine.clone()
        slice_affine[:3, 3] = (affine @ affine.new_tensor([0.0, 0.0, float(k), 1.0]))[:3]
        image = MetaTensor(volume[..., k].as_tensor(), affine=slice_affine, meta={"intensity_range": window})
        paths.append(write_image(image, out_dir / f"{_stem(str(source))}_{k:03d}.nii.gz", dtype=np.int16))
    return paths


def write_ct_datalist(out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """Slice every source of :data:`CT_SPLIT` into ``out_dir/<key>/`` and write ``out_dir/datalist.json``
    (absolute paths; each item names its ``patient``); returns the datalist path."""
    root = Path(data_dir) if data_dir else shared_data_dir() / "chest_ct"
    out_dir = Path(out_dir)
    missing = [root / s for sources in CT_SPLIT.values() for s in sources if not (root / s).exists()]
    if missing:  # checked first, so that nothing is written for an incomplete split
        raise InputError(f"{missing[0]}: chest CT source not found; set MONAI_SR_DATA or pass --data-dir.")
    datalist: dict = {"window_hu": list(CT_WINDOW)}
    for key, sources in CT_SPLIT.items():
        items = []
        for source in sources:
            slices = write_slices(root / source, out_dir / key)
            items += [{"label": str(p.resolve()), "patient": _stem(source)} for p in slices]
        datalist[key] = items
    return write_datalist(out_dir, datalist)
