"""Load abnormality boxes from a CSV in the NIH ``boxes.csv`` form (``image,label,x,y,w,h``, pixels of a
``--csv_size`` image) into a studies folder as ``boxes`` labels, so a deployment starts from the public
annotations. Images are matched by file stem; boxes are scaled to each stored image's size.

    .venv/bin/python monailabel_app/import_boxes.py --studies <folder> --csv ../shared/data/nih_cxr14/boxes.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from fastapi import HTTPException

from lib.datastore import BOX_TAG, SRDatastore
from monai_sr_bundle.data.datalist import read_boxes_csv
from monai_sr_bundle.data.markups import boxes_to_markups
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.errors import InputError


def import_boxes(studies: str, csv_path: str, csv_size: float = 1024, overwrite: bool = False) -> dict[str, int]:
    """Save each stored image's CSV boxes as its ``boxes`` label; returns counts of what was done."""
    store = SRDatastore(studies, auto_reload=False)
    table: dict[str, list] = defaultdict(list)
    for image, rows in read_boxes_csv(csv_path).items():  # datastore ids are file stems
        table[Path(image).name.split(".")[0]].extend(rows)
    counts = {"images": 0, "boxes": 0, "skipped_existing": 0, "not_in_datastore": 0, "refused": 0}
    stored = set(store.list_images())
    counts["not_in_datastore"] = len(set(table) - stored)
    for image_id in sorted(set(table) & stored):
        if store.get_label_uri(image_id, BOX_TAG) and not overwrite:
            counts["skipped_existing"] += 1
            continue
        image = read_image(store.get_image_uri(image_id))
        fx, fy = image.shape[1] / csv_size, image.shape[2] / csv_size
        boxes = [[x0 * fx, y0 * fy, x1 * fx, y1 * fy] for _, (x0, y0, x1, y1) in table[image_id]]
        doc = boxes_to_markups(boxes, [finding for finding, _ in table[image_id]], image.affine)
        with tempfile.TemporaryDirectory() as tmp:
            label = Path(tmp) / f"{image_id}.json"
            label.write_text(json.dumps(doc, indent=1))
            try:
                store.save_label(image_id, str(label), BOX_TAG, {"source": str(csv_path)})
            except HTTPException as e:
                print(f"{image_id}: refused: {e.detail}", file=sys.stderr)
                counts["refused"] += 1
                continue
        counts["images"] += 1
        counts["boxes"] += len(boxes)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", required=True, help="the MONAI Label studies folder")
    parser.add_argument("--csv", required=True, help="CSV with columns image,label,x,y,w,h")
    parser.add_argument("--csv_size", type=float, default=1024, help="image size the CSV pixels refer to (NIH: 1024)")
    parser.add_argument("--overwrite", action="store_true", help="replace boxes already saved for an image")
    args = parser.parse_args(argv)
    try:
        if not Path(args.studies).is_dir() or not Path(args.csv).is_file():
            raise InputError(f"{args.studies if not Path(args.studies).is_dir() else args.csv}: not found.")
        if args.csv_size <= 0:
            raise InputError(f"--csv_size must be positive, got {args.csv_size}.")
        counts = import_boxes(args.studies, args.csv, args.csv_size, args.overwrite)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 1 if counts["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())
