"""What a surface reads of a network class without running it (:data:`TRAITS`): whether it trains, samples,
exports to ONNX as one graph, takes a noise level. For this package's networks they are read from the class's
source with ``ast`` (:func:`declared_traits`), so listing the methods imports neither torch nor MONAI; any
other network is built and asked (:func:`built_traits`)."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


#: what a surface reads of a network class without running it, with the value when the class says nothing
TRAITS = {"trainable": True, "stochastic": False, "exportable": True, "noise_aware": False}


def built_traits(network: nn.Module) -> dict:
    """The network's family (its module's name) and :data:`TRAITS` as the built network has them: trainable
    when it has parameters, the others its attributes."""
    return {
        "family": type(network).__module__.rsplit(".", 1)[-1],
        "trainable": any(True for _ in network.parameters()),
        "stochastic": bool(getattr(network, "stochastic", False)),
        "exportable": bool(getattr(network, "exportable", True)),
        "noise_aware": bool(getattr(network, "noise_aware", False)),
    }


def declared_traits(target: str) -> dict | None:
    """:func:`built_traits` of the network class ``target`` read from its source with ``ast``: its module and
    the :data:`TRAITS` assigned as literals in its body or its bases' (nearest first). None when the class, or
    a base other than ``nn.Module``, is not this package's: then only building the network tells."""
    module, _, name = target.rpartition(".")
    found = _class_source(module, name)
    traits = _declared(*found) if found else None
    return None if traits is None else {"family": found[0].rsplit(".", 1)[-1], **TRAITS, **traits}


def _declared(module: str, node: ast.ClassDef) -> dict | None:
    own = {
        stmt.targets[0].id: bool(stmt.value.value)
        for stmt in node.body
        if isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
        and stmt.targets[0].id in TRAITS
        and isinstance(stmt.value, ast.Constant)
    }
    for base in node.bases:
        if isinstance(base, ast.Attribute) and ast.unparse(base) in ("nn.Module", "torch.nn.Module"):
            continue
        found = _class_source(module, base.id) if isinstance(base, ast.Name) else None
        inherited = _declared(*found) if found else None
        if inherited is None:
            return None
        own = {**inherited, **own}
    return own


@lru_cache(maxsize=64)
def _class_source(module: str, name: str) -> tuple[str, ast.ClassDef] | None:
    """(defining module, class node) of ``module.name``, following ``from ... import`` re-exports, within
    this package's files only (nothing is imported)."""
    package, _, rest = module.partition(".")
    if package != __package__:
        return None
    path = Path(__file__).parent.joinpath(*rest.split(".")) if rest else Path(__file__).parent
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not path.is_file():
        return None
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _class_source(node.module, alias.name)
    return None
