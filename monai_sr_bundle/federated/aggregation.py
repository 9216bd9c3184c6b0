"""What the server does with the sites' updates of one round before anything is published: each update is
checked against the global model (the same keys but the BatchNorm statistics, which stay at the sites; the
same shapes and kinds of number; all finite: nothing is broadcast and nothing non-finite averaged in),
updates far larger than the round's others are refused, the sites' weights are their declared training
images, capped, and the accepted updates are combined by a mean, a coordinate-wise median or a trimmed mean
(the robust rules users know from Flower's FedMedian and FedTrimmedAvg). Pure functions over ``{key: array}``
dicts, so the controller stays thin and tests need no NVFlare."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: the meta key under which a site declares how many training images it has (its aggregation weight)
NUM_SAMPLES = "num_training_images"
#: what BatchNorm layers keep of the images they saw: a site never sends them (a running mean is the mean
#: intensity of its training batches), and the global model keeps those of round 0
SITE_ONLY = (".running_mean", ".running_var", ".num_batches_tracked")
#: how the accepted updates of a round are combined
RULES = ("mean", "median", "trimmed_mean")
#: what a site's update is compared with: the global model (a full update) or nothing (a difference)
FULL, DIFF = "full", "diff"


def shared(params: Mapping) -> dict:
    """What of a state dict leaves a site: all but the BatchNorm statistics (:data:`SITE_ONLY`)."""
    return {k: v for k, v in params.items() if not k.endswith(SITE_ONLY)}


def check_update(params: Mapping, reference: Mapping) -> str | None:
    """Why ``params`` cannot be aggregated with the global model ``reference``, in a few words, or None."""
    missing, extra = sorted(set(reference) - set(params)), sorted(set(params) - set(reference))
    if missing or extra:
        return f"keys differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, ref in reference.items():
        value, ref = np.asarray(params[key]), np.asarray(ref)
        if value.shape != ref.shape:
            return f"{key} has shape {list(value.shape)}, the global model {list(ref.shape)}"
        if value.dtype.kind not in "fiu" or (value.dtype.kind == "f") != (ref.dtype.kind == "f"):
            return f"{key} is {value.dtype}, the global model {ref.dtype}"
        if not np.isfinite(value).all():
            return f"{key} holds NaN or infinite values"
    return None


def update_norm(params: Mapping, reference: Mapping, kind: str = FULL) -> float:
    """The size of a site's change to the global model: the L2 norm over its floating-point tensors."""
    total = 0.0
    for key, ref in reference.items():
        ref = np.asarray(ref)
        if ref.dtype.kind != "f":
            continue
        change = np.asarray(params[key], np.float64) - (ref if kind == FULL else 0.0)
        total += float(np.square(change).sum())
    return total**0.5


def lower_median(values) -> float:
    """The median, the lower middle value for an even count: with two sites, the smaller one, so that one
    site alone cannot move the yardstick it is measured by."""
    ordered = sorted(values)
    return float(ordered[(len(ordered) - 1) // 2])


def outliers(norms: Mapping[str, float], max_ratio: float) -> dict[str, str]:
    """The sites whose update norm exceeds ``max_ratio`` times the round's lower median, with the reason."""
    if len(norms) < 2:
        return {}
    median = lower_median(norms.values())
    return {
        site: f"its update is {norm / max(median, 1e-12):.3g} times the round's median size (more than {max_ratio:g})"
        for site, norm in norms.items()
        if norm > max_ratio * median
    }


def capped_weights(claims: Mapping[str, float], max_ratio: float) -> dict[str, float]:
    """Aggregation weights from each site's declared training images, each at most ``max_ratio`` times the
    round's lower median claim (a site that claims 10^9 images weighs as ``max_ratio`` median sites); a
    claim that is not a positive number counts as one image."""
    clean = {s: float(c) if _positive(c) else 1.0 for s, c in claims.items()}
    cap = max_ratio * lower_median(clean.values()) if clean else 0.0
    return {s: min(c, cap) for s, c in clean.items()}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value >= 1


def combine(
    updates: Mapping[str, Mapping], weights: Mapping[str, float], rule: str = "mean", trim: float = 0.2
) -> dict[str, np.ndarray]:
    """The accepted ``updates`` combined key by key: the ``weights``-weighted mean, the coordinate-wise
    median, or the mean after dropping the ``trim`` share of highest and lowest values per coordinate (at
    least one each way once three sites remain). Integer tensors (BatchNorm's batch counters) are rounded
    back to their type."""
    if rule not in RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}; use one of {', '.join(RULES)}")
    sites = list(updates)
    w = np.asarray([weights[s] for s in sites], np.float64)
    out = {}
    for key in updates[sites[0]]:
        first = np.asarray(updates[sites[0]][key])
        stack = np.stack([np.asarray(updates[s][key], np.float64) for s in sites])
        if rule == "mean" or len(sites) < 3:
            value = np.tensordot(w / w.sum(), stack, axes=1)
        elif rule == "median":
            value = np.median(stack, axis=0)
        else:
            k = max(1, int(trim * len(sites)))
            value = np.sort(stack, axis=0)[k : len(sites) - k].mean(axis=0)
        out[key] = np.rint(value).astype(first.dtype) if first.dtype.kind in "iu" else value.astype(first.dtype)
    return out
