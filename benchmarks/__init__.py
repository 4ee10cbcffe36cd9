"""Benchmark commands (``python -m benchmarks.<name>``), each printing a table:
``composition``, ``trainer_fidelity`` and ``box_shapes`` on the toy world (``toy_host``: what
they share), ``regions`` (sampling
cost of regional attention), ``fusion`` and ``training`` at real SD1.5/SDXL
shapes. Not part of the node pack's runtime."""
