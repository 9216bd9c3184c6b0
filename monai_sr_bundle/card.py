"""The registry as its readers list it: each method described as data (``monai-sr methods --json``, which 3D
Slicer reads, and MONAI Label's ``/info``) and the model card's tables of them
(the bundle's ``docs/README.md``, which a test holds to :func:`markdown_table` and :func:`networks_table`)."""

from __future__ import annotations

from monai_sr_bundle import methods


def describe(method: methods.Method) -> dict:
    """What a client needs to list and offer ``method``."""
    return {
        "name": method.name,
        "family": method.family,
        "trainable": method.trainable,
        "stochastic": method.stochastic,
        "adversarial": method.adversarial,
        "exportable": method.exportable,
        "noise_aware": method.noise_aware,
        "scale": method.scale,
        "modality": method.modality,
        "weights": method.weights_name if method.trainable else None,
        "weights_available": method.weights_available,
        "default": method.config.get("default") is True,
    }


def describe_all(scale: int = 4, modality: str = "cxr") -> list[dict]:
    return [describe(methods.get(name, scale, modality)) for name in methods.names()]


def networks_table(scale: int = 4, modality: str = "cxr") -> str:
    """Each method's network in words and its size, as its overlay says them (``description``, ``parameters``):
    the model card's table of networks."""
    lines = ["| method | network | parameters |", "|---|---|---|"]
    for name in methods.names():
        config = methods.get(name, scale, modality).config
        lines.append(f"| `{name}` | {config.get('description', '')} | {config.get('parameters', '')} |")
    return "\n".join(lines)


def markdown_table(scale: int = 4, modality: str = "cxr") -> str:
    """The methods as a Markdown table (the model card's list is this table)."""
    lines = ["| method | family | trainable | stochastic | ONNX export | weights |", "|---|---|---|---|---|---|"]
    for d in describe_all(scale, modality):
        weights = (
            "none needed"
            if not d["trainable"]
            else (f"`{d['weights']}`" if d["weights_available"] else "not trained yet")
        )
        yes = {True: "yes", False: "no"}
        name = f"`{d['name']}`" + (" (default)" if d["default"] else "")
        lines.append(
            f"| {name} | {d['family']} | {yes[d['trainable']]} | {yes[d['stochastic']]} | "
            f"{yes[d['exportable']]} | {weights} |"
        )
    return "\n".join(lines)
