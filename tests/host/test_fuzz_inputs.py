"""Fuzzing the region and concept nodes' inputs through ComfyUI's validator
and executor: every outcome is a clear error (refused when queued, or a
ValueError of the pack naming the input) or a finite latent — never a crash
inside torch, and never a black (non-finite) image."""

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_regional_attention import CHECKPOINT, workflow

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-0.5, max_value=1.5),
    st.sampled_from([0.0, 1.0, 1e-12, 1e39, -1e39]),
)
box = st.fixed_dictionaries(
    {"x0": numbers, "y0": numbers, "x1": numbers, "y1": numbers},
    optional={"weight": numbers, "ratio": numbers, "feather": numbers},
)


def _json(value) -> str:
    # JSON has no NaN or Infinity, but Python's json (and some editors) write them.
    return json.dumps(value, allow_nan=True)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    boxes=st.one_of(
        st.lists(box, min_size=0, max_size=3).map(lambda b: _json({"version": 1, "boxes": b})),
        st.text(max_size=40),
    ),
    strength=numbers,
    mask_weight=numbers,
    mask_ratio=numbers,
)
def test_every_outcome_is_a_clear_error_or_a_finite_latent(host, boxes, strength, mask_weight, mask_ratio):
    import comfy_host

    prompt = workflow(CHECKPOINT, regional=True, boxes=boxes)
    prompt["7"]["inputs"]["region_prompts"] = "a omgcat cat\na omgdog dog\na circle"
    prompt["9"]["inputs"]["strength"] = strength
    prompt["12"]["inputs"].update(weight=mask_weight, ratio=mask_ratio)
    prompt["5"]["inputs"]["steps"] = 1
    try:
        host.run(prompt)
    except comfy_host.PromptFailed as failed:
        message = str(failed)
        if message.startswith("prompt invalid"):
            return  # refused when queued, with the node's message (or ComfyUI's own min/max)
        errors = [d for e, d in host.executor.status_messages if e == "execution_error"]
        assert errors and errors[-1]["exception_type"] == "ValueError", message
        return
    samples = host.node_outputs("5")[0][0]["samples"]
    assert torch.isfinite(samples).all()
    assert all(math.isfinite(v) for v in (strength, mask_weight, mask_ratio))  # nothing non-finite got through


pytestmark = pytest.mark.usefixtures("host")
