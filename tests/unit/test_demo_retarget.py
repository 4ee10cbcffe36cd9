"""The demo on a real checkpoint: the example workflow is moved off the toy model completely."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "scripts"))

from run_demo import retarget  # noqa: E402


def workflow(name: str) -> dict:
    return json.loads((REPO / "workflows" / name).read_text())


def widgets(wf: dict, node_type: str) -> list[list]:
    return [n["widgets_values"] for n in sorted(wf["nodes"], key=lambda n: n["id"]) if n["type"] == node_type]


def test_checkpoint_concepts_triggers_and_size_are_all_replaced():
    wf = retarget(
        workflow("omg_two_concepts_regions.json"), "real.safetensors", [("a.pt", "sksdog"), ("b.pt", "skscat")]
    )
    assert widgets(wf, "CheckpointLoaderSimple") == [["real.safetensors"]]
    assert [w[0] for w in widgets(wf, "OMGLoadConcept")] == ["a.pt", "b.pt"]
    (regions,) = widgets(wf, "OMGRegions")
    assert regions[:2] == [512, 512] and regions[3] == "a sksdog\na skscat"
    assert all(w[:2] == [512, 512] for w in widgets(wf, "EmptyLatentImage"))
    assert all(w[1] == 1.0 for w in widgets(wf, "ImageScaleBy"))
    assert "toyworld" not in json.dumps(wf)


def test_every_toy_concept_must_be_replaced():
    with pytest.raises(SystemExit, match="loads 3 concept.*give as many --concept files"):
        retarget(workflow("omg_three_concepts.json"), "real.safetensors", [("a.pt", "sksdog")])
