"""Ship a router's weights (``networks/router.py``): the shipped files of its two networks, unchanged, under
``clean.`` and ``degraded.``, with a ``weights.json`` record naming them and their sha256.

    .venv/bin/python tools/route_weights.py runet_auto --clean runet --degraded runet_real --scale 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    import torch

    from monai_sr_bundle import methods
    from monai_sr_bundle.hashing import sha256
    from monai_sr_bundle.training import write_weights

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method")
    parser.add_argument("--clean", required=True)
    parser.add_argument("--degraded", required=True)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--modality", default="cxr")
    args = parser.parse_args(argv)
    router = methods.get(args.method, args.scale, args.modality)
    parts = {key: methods.get(getattr(args, key), args.scale, args.modality) for key in ("clean", "degraded")}
    state = {}
    for key, part in parts.items():
        stored = torch.load(part.weights_path, map_location="cpu", weights_only=True)
        state |= {f"{key}.{name}": value for name, value in stored.items()}
    router.network().load_state_dict(methods.expand_state(state))  # the parts fit the router, or it stops here
    record = {
        "command": f"python tools/route_weights.py {' '.join(argv or sys.argv[1:])}",
        "assembled_from": {
            key: {"file": p.weights_name, "sha256": sha256(p.weights_path)} for key, p in parts.items()
        },
        "data": f"none of its own: its networks' ({', '.join(p.weights_name for p in parts.values())})",
        "scale": args.scale,
        "modality": args.modality,
        "intensity": parts["clean"].intensity,
    }
    print(f"{router.weights_path} (sha256 {write_weights(state, router.weights_path, record)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
