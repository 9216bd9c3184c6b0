"""Boxes as 3D Slicer markups ROI JSON (round trip through real image geometry, malformed documents refused)
and the box-weighted L1 loss (checked against a direct computation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_sr_bundle.batch import default_input
from monai_sr_bundle.data.markups import MAX_BOXES, boxes_to_markups, markups_to_boxes
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.losses import PixelLoss, SRBatch
from monai_sr_bundle.transforms.boxes import BoxesToMask

BOXES = [[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 128.0, 5.5]]


def oblique_affine() -> torch.Tensor:
    """An LPS affine with anisotropic spacing, a flipped and rotated in-plane frame and an offset origin."""
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-1.0, 1.0, 1.0]) @ np.diag([0.7, 0.4, 2.5])
    a[:3, 3] = [-120.5, 33.0, 7.0]
    return torch.as_tensor(a)


@pytest.mark.parametrize("affine", ["ct", "oblique"])
def test_round_trip_keeps_boxes_and_findings(affine):
    image = read_image(default_input())  # pydicom's real CT slice: real spacing and origin
    a = image.affine if affine == "ct" else oblique_affine()
    doc = json.loads(json.dumps(boxes_to_markups(BOXES, ["Nodule", "Mass"], a)))  # through JSON text
    assert doc["markups"][0]["type"] == "ROI" and doc["markups"][0]["coordinateSystem"] == "LPS"
    boxes, findings = markups_to_boxes(doc, a, image.shape[1:3])
    assert findings == ["Nodule", "Mass"]
    assert torch.allclose(boxes, torch.tensor(BOXES), atol=1e-4)


def test_ct_geometry_puts_boxes_in_millimetres():
    image = read_image(default_input())
    spacing = image.affine[:3, :3].norm(dim=0)
    roi = boxes_to_markups([[10, 20, 40, 60]], ["Mass"], image.affine)["markups"][0]
    assert roi["size"][:2] == pytest.approx([30 * float(spacing[0]), 40 * float(spacing[1])])
    # the centre of the box's pixels (index 24.5, 39.5) mapped by the image's own affine
    expected = image.affine @ torch.tensor([24.5, 39.5, 0.0, 1.0], dtype=image.affine.dtype)
    assert roi["center"] == pytest.approx(expected[:3].tolist())


def test_ras_coordinates_and_other_name_fields_are_read():
    a = torch.eye(4, dtype=torch.float64)
    roi = {"type": "ROI", "coordinateSystem": "RAS", "center": [-30.0, -40.0, 0.0], "size": [10, 20, 1],
           "controlPoints": [{"label": "Effusion"}]}  # fmt: skip
    boxes, findings = markups_to_boxes({"markups": [roi]}, a, (100, 100))
    # RAS (-30, -40) is LPS (30, 40): index 30, 40, so pixel edges 25.5..35.5 and 30.5..50.5
    assert boxes.tolist() == [[25.5, 30.5, 35.5, 50.5]] and findings == ["Effusion"]
    roi = {"type": "ROI", "center": [50, 50, 0], "size": [4, 4, 0], "label": {"value": "Mass"}}  # MONAI Label's field
    assert markups_to_boxes({"markups": [roi]}, a, (100, 100))[1] == ["Mass"]
    assert markups_to_boxes({"markups": []}, a, (100, 100))[0].shape == (0, 4)  # read, found normal


def roi(**changes):
    base = {"type": "ROI", "name": "Mass", "center": [50.0, 50.0, 0.0], "size": [10.0, 10.0, 1.0]}
    return {"markups": [{**base, **changes}]}


@pytest.mark.parametrize(
    "doc, message",
    [
        ([1, 2], "not a 3D Slicer markups document"),
        ({"markups": "x"}, "not a 3D Slicer markups document"),
        ({"markups": [{"type": "Fiducial"}]}, "is not an ROI"),
        (roi(center=[1, 2]), "'center' must be a list of 3 numbers"),
        (roi(center=["a", 1, 2]), "'center' must be a list of 3 numbers"),
        (roi(center=[float("nan"), 1, 2]), "non-finite"),
        (roi(size=[-5, 10, 1]), "negative or zero size"),
        (roi(size=[10, 0, 1]), "negative or zero size"),
        (roi(center=[98, 50, 0]), "extends outside the image"),
        (roi(center=[50, 50, 5000]), "off the image's plane"),
        (roi(center=[50, 50, 1.2]), "off the image's plane"),  # a 1 mm thick box 1.2 mm above the radiograph
        (roi(coordinateUnits="um"), "LPS or RAS in mm"),
        (roi(name="", controlPoints=[]), "no finding name"),
        (roi(name="x" * 500), "printable text"),
        (roi(orientation=[1, 0, 0]), "'orientation' must be a list of 9 numbers"),
        ({"markups": roi()["markups"] * (MAX_BOXES + 1)}, "at most"),
    ],
)
def test_malformed_documents_are_refused(doc, message):
    with pytest.raises(InputError, match=message):
        markups_to_boxes(doc, torch.eye(4), (100, 100), name="img1")


def test_boxes_meet_a_slice_of_their_image():
    """A box whose slab touches the radiograph's plane, or any slice of a volume, is read."""
    assert markups_to_boxes(roi(center=[50, 50, 0.9]), torch.eye(4), (100, 100))[0].shape == (1, 4)
    assert markups_to_boxes(roi(center=[50, 50, 3], size=[10, 10, 8]), torch.eye(4), (100, 100))[0].shape == (1, 4)
    assert markups_to_boxes(roi(center=[50, 50, 7]), torch.eye(4), (100, 100, 10))[0].shape == (1, 4)
    with pytest.raises(InputError, match="slice 11.0 of 10"):
        markups_to_boxes(roi(center=[50, 50, 11]), torch.eye(4), (100, 100, 10))


def test_findings_must_match_boxes():
    with pytest.raises(InputError, match="one name per box"):
        boxes_to_markups(BOXES, ["Mass"], torch.eye(4))


def test_box_weighted_loss_against_direct_computation():
    torch.manual_seed(0)
    pred, hr = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    mask = torch.cat([BoxesToMask((16, 16))([[2, 3, 9, 12]]), BoxesToMask((16, 16))([])])[:, None]
    target = SRBatch(hr=hr, mask=mask)
    err = (pred - hr).abs()
    expected = err.mean() + 2.5 * (err * mask).sum() / err.numel()
    assert torch.allclose(PixelLoss("l1", 2.5)(pred, target), expected)
    l1 = torch.nn.L1Loss()(pred, hr)
    assert torch.allclose(PixelLoss("l1", 0.0)(pred, target), l1)  # weight 0: plain L1
    assert torch.allclose(PixelLoss("l1", 2.5)(pred, SRBatch(hr=hr)), l1)  # no mask: plain L1
    mse = torch.nn.MSELoss()(pred, hr)
    assert torch.equal(PixelLoss("mse")(pred, target), mse)  # ADSR's reconstruction term
    squared = (pred - hr).square()
    assert torch.allclose(PixelLoss("mse", 2.5)(pred, target), squared.mean() + 2.5 * (squared * mask).mean())


def test_box_weighted_loss_refuses_bad_input():
    for bad in (-1, True, "1"):
        with pytest.raises(InputError, match="box_weight must be a number >= 0"):
            PixelLoss(box_weight=bad)
    with pytest.raises(InputError, match="the pixel distance must be one of l1, mse, got 'l2'"):
        PixelLoss("l2")
