"""The server's checks and rules over the sites' updates (``federated.aggregation``), without NVFlare: the
simulator test with poisoned sites is in test_federated.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.federated import aggregation as agg
from monai_sr_bundle.federated.job import load_job_config
from monai_sr_bundle.jsonfile import read_json_object

GLOBAL = {"conv.weight": np.ones((2, 3), np.float32), "bn.num_batches_tracked": np.array(5, np.int64)}


def _site(offset: float, count: int = 5) -> dict:
    return {"conv.weight": GLOBAL["conv.weight"] + offset, "bn.num_batches_tracked": np.array(count, np.int64)}


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda p: p.pop("conv.weight"), "missing ['conv.weight']"),
        (lambda p: p.update(extra=np.zeros(3)), "unexpected ['extra']"),
        (lambda p: p.update({"conv.weight": np.zeros(1, np.float32)}), "conv.weight has shape [1], the global model"),
        (lambda p: p.update({"conv.weight": np.zeros((2, 3), np.int32)}), "conv.weight is int32"),
        (lambda p: p.update({"conv.weight": np.full((2, 3), np.inf, np.float32)}), "NaN or infinite"),
        (lambda p: p.update({"conv.weight": np.array([["a"] * 3] * 2)}), "conv.weight is <U1"),
    ],
)
def test_an_update_that_does_not_fit_the_global_model_is_named(change, reason):
    params = _site(0.1)
    change(params)
    assert reason in agg.check_update(params, GLOBAL)
    assert agg.check_update(_site(0.1), GLOBAL) is None


def test_an_update_far_larger_than_the_rounds_others_is_an_outlier():
    norms = {s: agg.update_norm(_site(d), GLOBAL) for s, d in {"a": 0.1, "b": 0.2, "c": 1e6}.items()}
    assert norms["a"] == pytest.approx(0.1 * 6**0.5, rel=1e-5)
    assert list(agg.outliers(norms, 10)) == ["c"]
    assert agg.outliers({"a": norms["a"], "c": norms["c"]}, 10).keys() == {"c"}  # two sites: the smaller is the bar
    assert agg.outliers({"a": 1.0}, 10) == {} and agg.outliers({"a": 1.0, "b": 5.0}, 10) == {}
    assert agg.update_norm({"conv.weight": np.full((2, 3), 2.0)}, GLOBAL, agg.DIFF) == pytest.approx(2 * 6**0.5)


def test_declared_images_weigh_capped_at_the_rounds_median():
    assert agg.capped_weights({"a": 4, "f": 1e9}, 4) == {"a": 4, "f": 16}
    assert agg.capped_weights({"a": 100, "b": 120, "c": 1e9}, 4) == {"a": 100, "b": 120, "c": 480}
    assert agg.capped_weights({"a": None, "b": -3, "c": float("nan"), "d": True}, 4) == dict.fromkeys("abcd", 1.0)


def test_combination_rules():
    updates = {s: _site(d, n) for s, d, n in (("a", 0.0, 4), ("b", 1.0, 5), ("c", 2.0, 6), ("d", 100.0, 7))}
    weights = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    mean = agg.combine(updates, weights, "mean")
    assert np.allclose(mean["conv.weight"], 1 + 103 / 4) and mean["conv.weight"].dtype == np.float32
    assert mean["bn.num_batches_tracked"].dtype == np.int64 and int(mean["bn.num_batches_tracked"]) == 6
    assert np.allclose(agg.combine(updates, weights, "median")["conv.weight"], 2.5)
    assert np.allclose(agg.combine(updates, weights, "trimmed_mean")["conv.weight"], 2.5)  # drops 0.0 and 100
    two = {k: updates[k] for k in "ab"}
    assert np.allclose(agg.combine(two, {"a": 3.0, "b": 1.0}, "median")["conv.weight"], 1.25)  # < 3 sites: the mean
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        agg.combine(updates, weights, "max")


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"name": "j", "sites": {"site-a": null, "site-a": "other.json"}}')
    with pytest.raises(InputError, match="key 'site-a' is given twice in one object"):
        read_json_object(path, "the job config")


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"aggregation": "max"}, "aggregation must be one of mean, median, trimmed_mean"),
        ({"max_update_ratio": 0.5}, "max_update_ratio must be a number of at least 1"),
        ({"max_weight_ratio": "4"}, "max_weight_ratio must be a number of at least 1"),
    ],
)
def test_job_config_aggregation_keys(tmp_path, extra, message):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"name": "j", "method": "srcnn", "sites": {"site-a": None}, **extra}))
    with pytest.raises(InputError, match=message):
        load_job_config(path)
    path.write_text(json.dumps({"name": "j", "method": "srcnn", "sites": {"site-a": None}, "aggregation": "median"}))
    assert load_job_config(path)["aggregation"] == "median"


def test_nvflare_still_keeps_a_broadcasts_minimum_where_the_controller_raises_it():
    """The controller makes a round wait for one more answer per failed site by raising the broadcast task's
    minimum, a property NVFlare names only privately: if an NVFlare upgrade moves it, this fails (the round
    would end before enough sites trained)."""
    from nvflare.apis.controller_spec import Task
    from nvflare.apis.impl.bcast_manager import BcastTaskManager
    from nvflare.apis.shareable import Shareable

    from monai_sr_bundle.federated.controller import MIN_RESPONSES_PROP

    task = Task(name="train", data=Shareable())
    BcastTaskManager(task, min_responses=3)
    assert task.props.get(MIN_RESPONSES_PROP) == 3, f"NVFlare no longer keeps the minimum in {MIN_RESPONSES_PROP!r}"
