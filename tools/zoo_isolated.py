"""Runs what the model zoo's CI and a zoo user run, with monai-sr unimportable, so that only the exported
bundle's own code (its ``scripts`` package) can answer. Started by :mod:`tools.zoo_ci` as a program:

    python tools/zoo_isolated.py launch <script> [args...]          a zoo CI script, as ``python <script>`` runs it
    python tools/zoo_isolated.py workflows <bundle> <zoo_ci> <stages as JSON>
                                                                     the bundle's workflows, as the zoo's unit tests
"""

import json
import os
import runpy
import sys

sys.modules["monai_sr_bundle"] = None  # an import of the development package fails here


def launch(script: str, *args: str) -> None:
    """``python <script> args``: the script's folder first on ``sys.path``, run as ``__main__``."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def workflows(bundle: str, zoo_ci: str, stages: str) -> None:
    """Each ``(workflow type, config files, overrides)`` of ``stages`` through the zoo's own
    ``ci/unit_tests/utils.py::check_workflow``: MONAI's property check for the type, then the run."""
    sys.path[:0] = [bundle, os.path.join(zoo_ci, "ci", "unit_tests")]
    from monai.bundle import ConfigWorkflow
    from utils import check_workflow

    configs = os.path.join(bundle, "configs")
    for kind, files, override in json.loads(stages):
        workflow = ConfigWorkflow(
            workflow_type=kind,
            config_file=[os.path.join(configs, f) for f in files],
            logging_file=os.path.join(configs, "logging.conf"),
            meta_file=os.path.join(configs, "metadata.json"),
            bundle_root=bundle,
            **override,
        )
        check_workflow(workflow, check_properties=True)


if __name__ == "__main__":
    {"launch": launch, "workflows": workflows}[sys.argv[1]](*sys.argv[2:])
