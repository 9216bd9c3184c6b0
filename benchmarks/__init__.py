"""Benchmarks of monai-sr, one module each on one harness (:mod:`benchmarks.harness`): run one with
``python -m benchmarks.<name>`` from the repository root."""
