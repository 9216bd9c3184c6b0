"""Instruments the tests and the benchmarks drive (a browser, a MONAI Label server, federated faults) and
maintenance scripts (``python tools/<name>.py``)."""
