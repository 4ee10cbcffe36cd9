"""Benchmark commands (``python -m benchmarks.<name>``), each printing a table:
``composition`` and ``trainer_fidelity`` on the toy world, ``regions`` (sampling
cost of regional attention), ``fusion`` and ``training`` at real SD1.5/SDXL
shapes. Not part of the node pack's runtime."""
