"""Tests for artifact synthesis and box handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import RandSpatialCropd

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.transforms.artifacts import ARTIFACT_KINDS, RandArtifacts, RandArtifactsd
from monai_sr_bundle.transforms.boxes import (
    BoxesToMask,
    BoxesToMaskd,
    CropBoxesd,
    ScaleBoxes,
    ScaleBoxesd,
    crop_boxes,
    validate_boxes,
)


def _pair(size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand((1, size * 2, size * 2), generator=g) * 0.5
    lr = torch.rand((1, size, size), generator=g) * 0.5
    return {"hr": hr, "lr": lr}


# ---------------------------------------------------------------- artifacts


def test_artifacts_only_lr_changes_and_hr_bitwise_untouched():
    data = _pair()
    hr_before, lr_before = data["hr"].clone(), data["lr"].clone()
    t = RandArtifactsd(keys="lr", prob=1.0, num_artifacts=(2, 3)).set_random_state(1)
    out = t(data)
    assert torch.equal(out["hr"], hr_before) and out["hr"] is data["hr"]
    assert not torch.equal(out["lr"], lr_before)
    assert torch.equal(data["lr"], lr_before)  # input not modified in place
    assert out["lr"].shape == lr_before.shape and out["lr"].dtype == torch.float32
    assert float(out["lr"].min()) >= 0.0 and float(out["lr"].max()) <= 1.0


def test_artifacts_seeded_reproducible_and_seed_dependent():
    def run(seed):
        return RandArtifactsd(keys="lr", prob=1.0, num_artifacts=3).set_random_state(seed)(_pair())["lr"]

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    arr = RandArtifacts(prob=1.0, num_artifacts=2)
    a = arr.set_random_state(3)(torch.zeros(1, 24, 24))
    b = arr.set_random_state(3)(torch.zeros(1, 24, 24))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
@pytest.mark.parametrize("size", [8, 40])
def test_each_kind_renders_something(kind, size):
    t = RandArtifacts(prob=1.0, num_artifacts=1, kinds=(kind,)).set_random_state(0)
    img = torch.zeros((1, size, size + 3))
    out = t(img)
    assert [s.kind for s in t.specs] == [kind]
    mask = t.render_mask((size, size + 3))
    assert mask.shape == (size, size + 3) and mask.max() > 0
    assert float(out.max()) > 0.5  # bright by default
    assert torch.count_nonzero(out) == np.count_nonzero(mask)


def test_dark_artifacts():
    t = RandArtifacts(prob=1.0, num_artifacts=2, kinds=("circle", "line"), dark_prob=1.0).set_random_state(2)
    out = t(torch.ones((1, 32, 32)))
    assert float(out.min()) < 0.2 and float(out.max()) == 1.0


def test_prob_zero_is_noop():
    data = _pair()
    out = RandArtifactsd(keys="lr", prob=0.0, mask_key="art").set_random_state(0)(data)
    assert torch.equal(out["lr"], data["lr"]) and torch.equal(out["hr"], data["hr"])
    assert out["art"].shape == (1, 32, 32) and out["art"].sum() == 0
    img = torch.rand(1, 16, 16)
    assert torch.equal(RandArtifacts(prob=0.0)(img), img)


def test_tiny_image_and_mask_key():
    data = {"lr": torch.full((1, 8, 8), 0.2), "hr": torch.full((1, 32, 32), 0.2)}
    out = RandArtifactsd(keys="lr", prob=1.0, num_artifacts=(2, 2), mask_key="art").set_random_state(4)(data)
    assert out["lr"].shape == (1, 8, 8) and not torch.equal(out["lr"], data["lr"])
    changed = out["lr"][0] != 0.2
    assert out["art"].shape == (1, 8, 8)
    assert torch.equal(changed, out["art"][0] > 0)


def test_metatensor_meta_preserved():
    img = MetaTensor(torch.rand(1, 20, 24) * 0.5, meta={"filename_or_obj": "x.png"})
    img.affine[0, 0] = 0.7
    out = RandArtifacts(prob=1.0, num_artifacts=2).set_random_state(0)(img)
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "x.png" and float(out.affine[0, 0]) == pytest.approx(0.7)
    assert out.dtype == img.dtype and not torch.equal(out.as_tensor(), img.as_tensor())


def test_artifacts_bad_arguments():
    with pytest.raises(InputError, match="kinds"):
        RandArtifacts(kinds=("square",))
    with pytest.raises(InputError, match=r"\(C, X, Y\)"):
        RandArtifacts(prob=1.0)(torch.zeros(1, 1, 8, 8))


# ---------------------------------------------------------------- boxes


def test_scale_boxes():
    boxes = torch.tensor([[100.0, 200.0, 300.0, 500.0]])
    assert torch.equal(ScaleBoxes(0.5)(boxes), torch.tensor([[50.0, 100.0, 150.0, 250.0]]))
    assert torch.allclose(ScaleBoxes((0.25, 0.5))(boxes), torch.tensor([[25.0, 100.0, 75.0, 250.0]]))
    out = ScaleBoxesd("boxes", 1 / 3)({"boxes": [[3, 3, 9, 6]]})["boxes"]
    assert out.is_floating_point() and torch.allclose(out, torch.tensor([[1.0, 1.0, 3.0, 2.0]]))
    assert ScaleBoxes(0.5)(torch.zeros(0, 4)).shape == (0, 4)
    assert ScaleBoxes(0.5)([]).shape == (0, 4)
    with pytest.raises(InputError):
        ScaleBoxes(0)


def test_boxes_to_mask_matches_slicing():
    boxes = torch.tensor([[2.0, 3.0, 7.0, 5.0], [10.0, 0.0, 12.0, 16.0], [14.0, 14.0, 30.0, 30.0]])
    mask = BoxesToMask((16, 20))(boxes)
    ref = torch.zeros((1, 16, 20))
    ref[:, 2:7, 3:5] = 1
    ref[:, 10:12, 0:16] = 1
    ref[:, 14:16, 14:20] = 1  # clipped to the image
    assert mask.shape == (1, 16, 20) and mask.dtype == torch.float32
    assert torch.equal(mask, ref)
    assert BoxesToMask()(torch.zeros(0, 4), (5, 6)).sum() == 0


def test_boxes_to_maskd_takes_reference_shape_and_affine():
    img = MetaTensor(torch.rand(1, 12, 10))
    img.affine[1, 1] = 0.5
    d = BoxesToMaskd("boxes", ref_key="hr")({"hr": img, "boxes": torch.tensor([[1.0, 1.0, 3.0, 4.0]])})
    assert d["boxes_mask"].shape == (1, 12, 10) and d["boxes_mask"].sum() == 6
    assert isinstance(d["boxes_mask"], MetaTensor) and float(d["boxes_mask"].affine[1, 1]) == 0.5
    d = BoxesToMaskd("boxes", spatial_shape=(4, 4), mask_keys="m")({"boxes": torch.zeros(0, 4)})
    assert d["m"].shape == (1, 4, 4)
    with pytest.raises(InputError):
        BoxesToMaskd("boxes")


def test_validate_boxes():
    ok = validate_boxes([[0, 0, 64, 32]], (64, 32))
    assert ok.shape == (1, 4) and ok.is_floating_point()
    assert validate_boxes(torch.zeros(0, 4), (8, 8)).shape == (0, 4)
    with pytest.raises(InputError, match="outside"):
        validate_boxes([[10.0, 10.0, 70.0, 20.0]], (64, 64), name="img1.png")
    with pytest.raises(InputError, match="outside"):
        validate_boxes([[-5.0, 10.0, 20.0, 20.0]], (64, 64))
    with pytest.raises(InputError, match="non-positive size"):
        validate_boxes([[10.0, 10.0, 5.0, 20.0]], (64, 64))
    with pytest.raises(InputError, match=r"\(N, 4\)"):
        validate_boxes(torch.zeros(2, 3), (64, 64))
    with pytest.raises(InputError, match="non-finite"):
        validate_boxes([[0.0, 0.0, float("nan"), 2.0]], (64, 64))


def test_crop_boxes():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 4.0, 4.0], [28.0, 5.0, 40.0, 9.0]])
    out, keep = crop_boxes(boxes, start=(8, 4), size=(24, 16), return_indices=True)
    assert keep.tolist() == [0, 2]  # the second box is outside the crop
    assert torch.equal(out, torch.tensor([[2.0, 6.0, 12.0, 16.0], [20.0, 1.0, 24.0, 5.0]]))
    assert crop_boxes(torch.zeros(0, 4), (0, 0), (4, 4)).shape == (0, 4)


def test_crop_boxesd_follows_monai_crop():
    img = MetaTensor(torch.rand(1, 40, 30))
    boxes = torch.tensor([[5.0, 5.0, 30.0, 20.0]])
    d = {"hr": img, "boxes": boxes, "mask": BoxesToMask((40, 30))(boxes)}
    crop = RandSpatialCropd(["hr", "mask"], roi_size=(20, 16), random_size=False).set_random_state(3)
    d = CropBoxesd("boxes", ref_key="hr")(crop(d))
    assert torch.equal(BoxesToMask((20, 16))(d["boxes"]), d["mask"].as_tensor())
    with pytest.raises(InputError, match="crop"):
        CropBoxesd("boxes", ref_key="hr")({"hr": MetaTensor(torch.rand(1, 4, 4)), "boxes": boxes})
