"""Queue-time checks shared by the nodes' ``validate_inputs``.

ComfyUI runs ``validate_inputs`` when a prompt is queued, so a bad value is
answered in ``/prompt``'s ``node_errors`` before any loader or sampler runs.
A node that validates an input by name takes over ComfyUI's own min/max check
for it, so ``numbers_in_range`` does both: the schema's bounds, and finiteness
(NaN passes ComfyUI's comparisons, and JSON can carry it).
"""

from __future__ import annotations

import math


def numbers_in_range(node_class, **values) -> bool | str:
    """True, or a message naming the first numeric input that is not finite or
    lies outside the node schema's min/max. ``None`` (a linked input, not known
    at queue time) passes."""
    bounds = {i.id: (getattr(i, "min", None), getattr(i, "max", None)) for i in node_class.define_schema().inputs or []}
    for name, value in values.items():
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            return f"{name} is {value}: give it a finite number"
        low, high = bounds.get(name, (None, None))
        if low is not None and value < low:
            return f"{name} {value:g} is below its minimum {low:g}"
        if high is not None and value > high:
            return f"{name} {value:g} is above its maximum {high:g}"
    return True


def checked(check, *args) -> bool | str:
    """True when ``check(*args)`` passes, else its ValueError's message (what the user reads)."""
    try:
        check(*args)
    except ValueError as e:
        return str(e)
    return True
