"""OMG Attention Maps through ComfyUI's own validator and executor: the demo's
chain (concepts -> fuse -> regions -> regional attention with
record_attention_maps -> KSampler -> maps)."""

import pytest
import torch
from sampling import encode, sample

CHECKPOINT = "omg-tiny-sd15.safetensors"
BOXES = '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 0.5, "y1": 1}, {"x0": 0.5, "y0": 0, "x1": 1, "y1": 1}]}'
SIZE = 64


def demo_prompt(record: bool = True, seed: int = 0) -> dict:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "4": {
            "class_type": "OMGFuseConcepts",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "concepts": ["3", 0],
                "method": "additive",
                "regularization": 0.001,
            },
        },
        "5": {
            "class_type": "OMGRegions",
            "inputs": {"width": SIZE, "height": SIZE, "boxes": BOXES, "region_prompts": "a omgcat cat\na omgdog dog"},
        },
        "6": {
            "class_type": "OMGApplyRegionalAttention",
            "inputs": {
                "model": ["4", 0],
                "clip": ["4", 1],
                "regions": ["5", 0],
                "base_prompt": "a photo of a cat and a dog in a garden",
                "mode": "fused",
                "concepts": ["3", 0],
                "record_attention_maps": record,
            },
        },
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry"}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "9": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["6", 0],
                "positive": ["6", 1],
                "negative": ["7", 0],
                "latent_image": ["8", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "10": {"class_type": "OMGAttentionMaps", "inputs": {"model": ["6", 0], "samples": ["9", 0]}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    }
    for node, lora, chain in (("2", "omg-test-cat.safetensors", None), ("3", "omg-test-dog.safetensors", "2")):
        prompt[node] = {
            "class_type": "OMGLoadConcept",
            "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora, "trigger": "", "strength": 1.0},
        }
        if chain:
            prompt[node]["inputs"]["concepts"] = [chain, 0]
    return prompt


def recorder_of(host):
    from omg_core.pipelines.attention_maps import model_recorder

    return model_recorder(host.node_outputs("6")[0][0])


def failure_text(host, failed) -> str:
    errors = [d.get("exception_message", "") for e, d in host.executor.status_messages if e == "execution_error"]
    return str(failed.value) + " ".join(errors)


def test_each_concept_tokens_attention_lies_inside_its_own_box_and_the_image_has_one_panel_per_token(host):
    host.run(demo_prompt())
    image = host.node_outputs("10")[0][0]
    assert image.shape == (1, SIZE, 2 * SIZE + 4, 3) and image.min() >= 0 and image.max() <= 1
    recorder = recorder_of(host)
    assert set(recorder.tokens) == {"omgcat", "omgdog"}
    maps = recorder.maps(SIZE, SIZE)
    half = SIZE // 2
    for label, (left, right) in (("omgcat", (0, half)), ("omgdog", (half, SIZE))):
        m = maps[label]
        inside = m[:, left:right].sum()
        assert inside > 0.95 * m.sum(), f"{label}: {float(inside / m.sum()):.3f} of its attention in its box"
    # Panels are tinted with the region's palette colour: the cat panel red-dominant inside box 1.
    cat_panel = image[0, 8:-16, 4 : half - 4]
    assert cat_panel[..., 0].mean() > cat_panel[..., 2].mean()


def test_maps_of_one_run_do_not_leak_into_the_next(host):
    host.run(demo_prompt(seed=0))
    recorder = recorder_of(host)
    first = dict(recorder._counts)
    host.run(demo_prompt(seed=1))  # everything up to the sampler is cached: the same patched model samples again
    assert recorder_of(host) is recorder
    assert dict(recorder._counts) == first, "the recorder is emptied when a sampling run starts"


def test_a_clone_of_the_recording_model_records_on_its_own(host, sd15):
    host.run(demo_prompt())
    model = host.node_outputs("6")[0][0]
    positive = host.node_outputs("6")[1][0]
    recorder = recorder_of(host)
    before = {k: v.clone() for k, v in recorder._sums.items()}
    clone = model.clone()
    from omg_core.pipelines.attention_maps import model_recorder

    own = model_recorder(clone)
    assert own is not recorder and own.empty and own.tokens == recorder.tokens
    sample(clone, positive, encode(sd15[1], ""), SIZE, SIZE, steps=1, seed=3)
    assert not own.empty
    assert recorder._sums.keys() == before.keys()
    assert all(torch.equal(recorder._sums[k], before[k]) for k in before), "the original's maps are untouched"


def test_attention_maps_of_a_model_without_recorder_say_to_turn_recording_on(host):
    import comfy_host

    with pytest.raises(comfy_host.PromptFailed) as failed:
        host.run(demo_prompt(record=False))
    assert "turn on record_attention_maps on OMG Apply Regional Attention" in failure_text(host, failed)


def test_recording_without_concept_tokens_says_to_connect_the_concepts(host):
    import comfy_host

    prompt = demo_prompt()
    del prompt["6"]["inputs"]["concepts"]
    with pytest.raises(comfy_host.PromptFailed) as failed:
        host.run(prompt)
    assert "connect the OMG Load Concept chain to the concepts input" in failure_text(host, failed)


def test_attention_maps_before_any_sampling_say_to_sample_first(sd15):
    from omg_core.ops.regions import regions_from_widgets
    from omg_core.pipelines.attention_maps import attention_maps_image, concept_recorder
    from omg_core.pipelines.regional import regional_prompting

    model, clip, _ = sd15
    spec = regions_from_widgets(SIZE, SIZE, BOXES, "a red circle\na blue square", "", None)
    with pytest.raises(ValueError, match="no concept token in the region prompts \\(no concepts\\)"):
        concept_recorder(model, clip, spec)
    from omg_core.bridge.attention_recorder import AttentionRecorder

    patched, _ = regional_prompting(model, clip, spec, "x", recorder=AttentionRecorder({"red": (0, [2])}, spec))
    with pytest.raises(ValueError, match="no attention maps were recorded: sample with this MODEL"):
        attention_maps_image(patched)
