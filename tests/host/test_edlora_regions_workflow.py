"""Mix-of-Show parity end to end: two ED-LoRA concepts (layer-wise token
embeddings) placed in boxes with per-region negative prompts, through
ComfyUI's executor on the small SD1.5 model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from format_fixtures import write_edlora

import comfy_host

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def edlora_files(comfy_models_dir):
    names = []
    for seed, stem, tokens in ((11, "cat", ("<cat1>", "<cat2>")), (12, "dog", ("<dog1>", "<dog2>"))):
        name = f"omg-test-edlora-{stem}.pth"
        write_edlora(comfy_models_dir / "loras" / name, tokens=tokens, seed=seed)
        names.append(name)
    return names


def edlora_prompt(object_info, lora_names, negatives: str) -> dict:
    workflow = json.loads((REPO / "workflows" / "omg_two_concepts_regions.json").read_text())
    prompt = comfy_host.workflow_to_api(workflow, object_info)
    loaders = sorted((k for k, n in prompt.items() if n["class_type"] == "OMGLoadConcept"), key=int)
    for node_id, name in zip(loaders, lora_names):
        prompt[node_id]["inputs"]["lora_name"] = name
    for node in prompt.values():
        if node["class_type"] == "OMGFuseConcepts":
            node["inputs"]["method"] = "least_squares"
        if node["class_type"] == "OMGRegions":
            node["inputs"]["region_prompts"] = "a photo of <cat1> <cat2> cat\na photo of <dog1> <dog2> dog"
            node["inputs"]["region_negative_prompts"] = negatives
    return prompt


def sampled_latent(host, prompt) -> torch.Tensor:
    host.run(prompt)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "KSampler")
    return host.node_outputs(sampler)[0][0]["samples"].clone()


def test_two_edlora_concepts_with_region_negatives_run_end_to_end(host, object_info, edlora_files):
    with_negatives = sampled_latent(host, edlora_prompt(object_info, edlora_files, "blurry cat\nblurry dog"))
    without = sampled_latent(host, edlora_prompt(object_info, edlora_files, ""))
    assert torch.isfinite(with_negatives).all()
    assert not torch.equal(with_negatives, without), "region negative prompts did not reach the unconditional branch"
