"""Regional attention on ComfyUI's real models: the semantics the patch promises,
on SD1.5 (the tiny checkpoint) and SDXL (ComfyUI's SDXL class, small)."""

import pytest
import torch
from sampling import encode, sample

from omg_core.model.concept import Concept, LowRankUpdate
from omg_core.ops.regions import Region, RegionSpec

CHECKPOINT = "omg-tiny-sd15.safetensors"  # the name the host fixtures give the tiny checkpoint
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.375, 0.0, 1.0, 1.0)
LONG = "a " + ", ".join(f"tiny red circle number {i}" for i in range(20))  # > 77 tokens


def spec(*regions, width=64, height=64):
    return RegionSpec(width, height, tuple(regions))


def ap():
    from omg_core.bridge import attention_patch

    return attention_patch


def rp():
    from omg_core.pipelines import regional as regional_prompting

    return regional_prompting


def sdxl_cond(batch, seed, width, height):
    from omg_core.toyworld.tiny_checkpoints import sdxl_conditioning

    return sdxl_conditioning(batch, seed, width, height)


def apply_model(model, x, ctx, cond_or_uncond, capture_first_block=False):
    """One UNet evaluation with the model's patches; optionally the output of
    the first cross-attention block (its attn2 output) as well."""
    m = model.clone()
    first = ap().cross_attention_layers(model)[0].key
    seen = []

    def spy(n, extra_options):
        key = (*extra_options["block"], extra_options["block_index"])
        if key == first and not seen:
            seen.append(n.clone())
        return n

    m.set_model_attn2_output_patch(spy)
    to = dict(m.model_options["transformer_options"])
    to["cond_or_uncond"] = list(cond_or_uncond)
    kwargs = {}
    if m.model.diffusion_model.num_classes is not None:
        kwargs["y"] = torch.zeros(x.shape[0], m.model.diffusion_model.label_emb[0][0].in_features)
    t = torch.full((x.shape[0],), 0.5)
    with torch.inference_mode():
        out = m.model.apply_model(x, t, c_crossattn=ctx, transformer_options=to, **kwargs)
    return (out, seen[0]) if capture_first_block else out


# ----------------------------------------------------------------------------- SD1.5


_ENCODED: dict = {}


def enc(clip, text):
    """CONDITIONING of a prompt, encoded once per test session (CPU text encoding is slow)."""
    key = (id(clip), text)
    if key not in _ENCODED:
        _ENCODED[key] = encode(clip, text)
    return _ENCODED[key]


def test_no_regions_is_bit_identical_full_region_equals_its_prompt_and_nothing_leaks(sd15):
    model, clip, _ = sd15
    pos, neg = enc(clip, "a red circle"), enc(clip, "")
    plain = sample(model, pos, neg, steps=1)
    empty = ap().apply_regional_attention(model, spec(), [])
    assert torch.equal(sample(empty, pos, neg, steps=1), plain), "no regions must be plain sampling, bit for bit"
    full = spec(Region("a blue square", box=(0, 0, 1, 1)))
    patched, positive = rp().regional_prompting(model, clip, full, "a red circle")
    regional = sample(patched, positive, neg, steps=1)
    torch.testing.assert_close(regional, sample(model, enc(clip, "a blue square"), neg, steps=1), rtol=1e-3, atol=1e-3)
    assert (regional - plain).abs().max() > 1e-2, "the region prompt must matter"
    assert torch.equal(sample(model, pos, neg, steps=1), plain), "plain sampling changed after a regional run"


def test_full_image_long_region_prompt_equals_plain_at_odd_size_with_batch_two(sd15):
    model, clip, _ = sd15
    neg = enc(clip, "")
    full = spec(Region(LONG, box=(0, 0, 1, 1)), width=120, height=72)
    patched, positive = rp().regional_prompting(model, clip, full, "a red circle")
    assert patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    regional = sample(patched, positive, neg, 120, 72, steps=1, batch=2)
    plain = sample(model, enc(clip, LONG), neg, 120, 72, steps=1, batch=2)
    torch.testing.assert_close(regional, plain, rtol=1e-3, atol=1e-3)


def test_batch_rows_are_independent_and_each_gets_the_regions(sd15):
    model, clip, _ = sd15
    two = spec(Region("a blue square", box=LEFT), Region("a green cat", box=RIGHT))
    prompts = [ap().RegionPrompt(region_ctx(clip, r.prompt)) for r in two.regions]
    patched = ap().apply_regional_attention(model, two, prompts)
    pos, neg = enc(clip, "a red circle")[0][0], enc(clip, "")[0][0]
    x = torch.randn(2, 4, 9, 15, generator=torch.Generator().manual_seed(2))
    both = apply_model(patched, torch.cat([x, x]), torch.cat([neg, neg, pos, pos]), [1, 0])
    for i in range(2):
        one = apply_model(patched, torch.cat([x[i : i + 1]] * 2), torch.cat([neg, pos]), [1, 0])
        torch.testing.assert_close(both[[i, 2 + i]], one, rtol=1e-4, atol=1e-4)


def region_ctx(clip, text):
    return enc(clip, text)[0][0]


def test_changing_region_b_does_not_change_attention_inside_region_a(sd15):
    model, clip, _ = sd15
    RegionPrompt = ap().RegionPrompt
    layout = spec(Region("a", box=LEFT), Region("b", box=RIGHT))
    a = RegionPrompt(region_ctx(clip, "a blue square"))
    b1, b2 = RegionPrompt(region_ctx(clip, "a green cat")), RegionPrompt(region_ctx(clip, "a yellow house"))
    ctx = torch.cat([enc(clip, "")[0][0], enc(clip, "a red circle")[0][0]])
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for b in (b1, b2):
        patched = ap().apply_regional_attention(model, layout, [a, b])
        outs.append(apply_model(patched, x, ctx, [1, 0], capture_first_block=True)[1].view(2, 8, 8, -1))
    # grid 8x8: A covers columns 0-3, B columns 3-7; A alone: columns 0-2
    assert torch.equal(outs[0][1, :, :3], outs[1][1, :, :3])
    assert not torch.equal(outs[0][1, :, 3:], outs[1][1, :, 3:])
    assert torch.equal(outs[0][0], outs[1][0]), "the uncond rows must not see region prompts"


def test_cond_uncond_order_does_not_matter_and_region_negatives_touch_only_uncond(sd15):
    model, clip, _ = sd15
    RegionPrompt = ap().RegionPrompt
    layout = spec(Region("a", box=LEFT, negative_prompt="blurry"))
    pos, neg = enc(clip, "a red circle")[0][0], enc(clip, "")[0][0]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    plain = ap().apply_regional_attention(model, layout, [RegionPrompt(region_ctx(clip, "a blue square"))])
    negs = ap().apply_regional_attention(
        model, layout, [RegionPrompt(region_ctx(clip, "a blue square"), region_ctx(clip, "blurry"))]
    )
    xx = torch.cat([x, x])
    cond_first = apply_model(negs, xx, torch.cat([pos, neg]), [0, 1])
    uncond_first = apply_model(negs, xx, torch.cat([neg, pos]), [1, 0])
    torch.testing.assert_close(cond_first[0], uncond_first[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond_first[1], uncond_first[0], rtol=1e-5, atol=1e-5)
    without = apply_model(plain, xx, torch.cat([pos, neg]), [0, 1])
    torch.testing.assert_close(without[0], cond_first[0], rtol=1e-5, atol=1e-5)
    assert (without[1] - cond_first[1]).abs().max() > 1e-4, "the region negative must change the uncond branch"


# ----------------------------------------------------------------------------- SDXL


def test_sdxl_no_regions_is_bit_identical_and_full_region_equals_plain(sdxl_inprocess):
    model = sdxl_inprocess
    width, height, batch = 120, 72, 2
    pos, neg = sdxl_cond(1, 1, width, height), sdxl_cond(1, 2, width, height)
    plain = sample(model, pos, neg, width, height, steps=1, batch=batch)
    empty = ap().apply_regional_attention(model, spec(width=width, height=height), [])
    assert torch.equal(sample(empty, pos, neg, width, height, steps=1, batch=batch), plain)
    region = sdxl_cond(1, 3, width, height)
    full = ap().apply_regional_attention(
        model, spec(Region("r", box=(0, 0, 1, 1)), width=width, height=height), [ap().RegionPrompt(region[0][0])]
    )
    regional = sample(full, pos, neg, width, height, steps=1, batch=batch)
    as_plain = [[region[0][0], pos[0][1]]]
    torch.testing.assert_close(regional, sample(model, as_plain, neg, width, height, steps=1, batch=batch))
    assert torch.equal(sample(model, pos, neg, width, height, steps=1, batch=batch), plain), "a patch leaked"


def test_sdxl_every_transformer_depth_is_patched_and_locality_holds_on_odd_grids(sdxl_inprocess):
    model = sdxl_inprocess
    layers = ap().cross_attention_layers(model)
    unet = model.model.diffusion_model
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert len(layers) == len(blocks) and [layer.order for layer in layers] == list(range(len(layers)))
    layout = spec(Region("a", box=LEFT), Region("b", box=RIGHT), width=120, height=72)
    ctx = lambda seed: sdxl_cond(1, seed, 120, 72)[0][0]  # noqa: E731
    x = torch.randn(2, 4, 9, 15, generator=torch.Generator().manual_seed(0))
    outs = []
    for seed in (11, 12):
        patched = ap().apply_regional_attention(
            model, layout, [ap().RegionPrompt(ctx(10)), ap().RegionPrompt(ctx(seed))]
        )
        _, first = apply_model(patched, x, torch.cat([ctx(1), ctx(2)]), [0, 1], capture_first_block=True)
        outs.append(first)
    # the first SDXL cross-attention runs at 5x8 (ceil of 9x15 / 2): A = columns 0-3, B = columns 3-7
    h, w = 5, 8
    assert outs[0].shape[1] == h * w
    a, b = (o.view(2, h, w, -1) for o in outs)
    assert torch.equal(a[0, :, :3], b[0, :, :3]) and not torch.equal(a[0, :, 3:], b[0, :, 3:])


@pytest.mark.usefixtures("comfy")
def test_sdxl_blocks_with_two_transformers_patch_each_and_full_region_equals_plain():
    import comfy.model_patcher
    import comfy.supported_models

    from omg_core.toyworld.tiny_checkpoints import SDXL_SMALL_UNET, init_weights_

    config = dict(
        SDXL_SMALL_UNET, transformer_depth=[0, 2], transformer_depth_output=[0, 0, 2, 2], transformer_depth_middle=2
    )
    sdxl = comfy.supported_models.SDXL(config)
    sdxl.set_inference_dtype(torch.float32, None)
    base = sdxl.get_model({})
    init_weights_(base.diffusion_model, 5)
    model = comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    keys = [layer.key for layer in ap().cross_attention_layers(model)]
    assert {("input", 3, 1), ("middle", 0, 1), ("output", 0, 1), ("output", 1, 1)} <= set(keys)
    pos, neg, region = (sdxl_cond(1, s, 120, 72) for s in (1, 2, 3))
    full = ap().apply_regional_attention(
        model, spec(Region("r", box=(0, 0, 1, 1)), width=120, height=72), [ap().RegionPrompt(region[0][0])]
    )
    assert set(full.model_options["transformer_options"]["patches_replace"]["attn2"]) == set(keys)
    regional = sample(full, pos, neg, 120, 72, steps=1)
    torch.testing.assert_close(regional, sample(model, [[region[0][0], pos[0][1]]], neg, 120, 72, steps=1))


# ----------------------------------------------------------------------------- routed mode


def kv_concept(model, name, trigger, seed, extra_key=None):
    g = torch.Generator().manual_seed(seed)
    unet = {}
    for layer in ap().cross_attention_layers(model):
        out_f = layer.module.to_k.out_features
        for x in "kv":
            unet[f"diffusion_model.{layer.path}.to_{x}.weight"] = LowRankUpdate(
                torch.randn(out_f, 2, generator=g), torch.randn(2, layer.context_dim, generator=g), scale=0.05
            )
    if extra_key:
        unet[extra_key] = next(iter(unet.values()))
    return Concept(name=name, triggers=(trigger,), family="sd15", source_format="native", unet=unet)


def test_routed_region_kv_is_its_own_concept_only_by_construction(sd15):
    model, clip, _ = sd15
    cat, dog, other_dog = kv_concept(model, "cat", "omgcat", 1), kv_concept(model, "dog", "omgdog", 2), None
    other_dog = kv_concept(model, "dog", "omgdog", 3)
    layout = spec(Region("a omgcat cat", box=LEFT), Region("a omgdog dog", box=RIGHT))
    ctx = [ap().RegionPrompt(region_ctx(clip, r.prompt)) for r in layout.regions]
    layers = ap().cross_attention_layers(model)
    with_dog = ap().routed_deltas(layers, ctx, [cat, dog])
    with_other = ap().routed_deltas(layers, ctx, [cat, other_dog])
    for layer in layers:
        key = (layer.path, 0, ap().COND)
        assert all(torch.equal(a, b) for a, b in zip(with_dog[key], with_other[key]))
        k_region = layer.module.to_k(ctx[0].cond) + with_dog[key][0]
        w = layer.module.to_k.weight.float() + cat.unet[f"diffusion_model.{layer.path}.to_k.weight"].dense()
        torch.testing.assert_close(k_region, ctx[0].cond @ w.T, rtol=1e-4, atol=1e-4)
    patched, positive = rp().regional_prompting(model, clip, layout, "a cat and a dog", "routed", [cat, dog])
    latent = sample(patched, positive, enc(clip, ""), steps=1)
    assert torch.isfinite(latent).all()


def test_a_routed_region_over_the_whole_image_samples_like_the_concept_loaded_alone(sd15):
    """Both halves of classifier-free guidance see the region's concept: the
    negative through W + ΔW as well, as when the concept is loaded by itself."""
    from omg_core.bridge.patching import apply_updates

    model, clip, _ = sd15
    cat = kv_concept(model, "cat", "omgcat", 5)
    prompt = "a omgcat cat"
    layout = spec(Region(prompt, box=(0.0, 0.0, 1.0, 1.0)))
    routed = ap().apply_regional_attention(
        model, layout, [ap().RegionPrompt(region_ctx(clip, prompt))], mode="routed", bindings=[cat]
    )
    alone, _ = apply_updates(model, clip, cat.scaled_unet(), {})
    pos, neg = enc(clip, prompt), enc(clip, "a blurry photo")
    base = sample(model, pos, neg, steps=2)
    want = sample(alone, pos, neg, steps=2)
    assert (want - base).abs().max() > 1e-2  # the concept does change the image
    torch.testing.assert_close(sample(routed, pos, neg, steps=2), want, rtol=1e-3, atol=1e-3)


def test_region_kv_follow_weight_patches_added_after_the_regional_patch(sd15):
    """The patch keeps region k/v between steps; a LoRA put on the regional
    model afterwards (a clone sharing the patch) must still be seen."""
    from omg_core.bridge.patching import apply_updates

    model, clip, _ = sd15
    layout = spec(Region("a blue square", box=LEFT))
    prompts = [ap().RegionPrompt(region_ctx(clip, "a blue square"))]
    pos, neg = enc(clip, "a red circle"), enc(clip, "")
    lora = kv_concept(model, "cat", "omgcat", 4).unet
    regional = ap().apply_regional_attention(model, layout, prompts)
    sample(regional, pos, neg, steps=1)  # fills the patch's k/v cache with the base weights
    patched_after, _ = apply_updates(regional, clip, lora, {})
    patched_first, _ = apply_updates(model, clip, lora, {})
    fresh = ap().apply_regional_attention(patched_first, layout, prompts)
    torch.testing.assert_close(sample(patched_after, pos, neg, steps=1), sample(fresh, pos, neg, steps=1))
    sample(model, pos, neg, steps=1)  # leave the shared checkpoint loaded without the LoRA


def test_routed_mode_refuses_concepts_beyond_attention_projections(sd15):
    model, clip, _ = sd15
    ff_key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"
    odd = kv_concept(model, "cat", "omgcat", 1, extra_key=ff_key)
    layout = spec(Region("a omgcat cat", box=LEFT))
    with pytest.raises(ValueError, match="concept 'cat' also changes 1 layer.*ff.net.2.*use mode 'fused'"):
        rp().regional_prompting(model, clip, layout, "a cat", "routed", [odd])


def test_region_features_of_another_family_are_refused(sd15):
    model, _, _ = sd15
    with pytest.raises(
        ValueError, match=r"region 1's text features have shape \(1, 77, 2048\).*reads \[1, tokens, 768\]"
    ):
        ap().apply_regional_attention(model, spec(Region("r", box=LEFT)), [ap().RegionPrompt(torch.zeros(1, 77, 2048))])


def test_unknown_mode_is_refused(sd15):
    model, clip, _ = sd15
    with pytest.raises(ValueError, match="mode must be one of fused, routed"):
        rp().regional_prompting(model, clip, spec(), "x", "mixed")


# ----------------------------------------------------------------------------- attention maps


def test_recorded_attention_map_of_a_concept_token_stays_in_its_box(sd15):
    from omg_core.render.region_images import render_attention_maps

    model, clip, _ = sd15
    layout = spec(Region("a omgcat cat", box=LEFT), Region("a omgdog dog", box=(0.75, 0.0, 1.0, 1.0)))
    cat, dog = kv_concept(model, "cat", "omgcat", 1), kv_concept(model, "dog", "omgdog", 2)
    tokens = rp().concept_tokens(model, clip, layout, "fused", [cat, dog])
    assert tokens["omgcat"][0] == 0 and tokens["omgcat"][1][0] == 2 and tokens["omgdog"][0] == 1  # after <start> "a"
    tokens["circle"] = (None, rp().token_positions(clip, "a red circle", "circle"))
    from omg_core.bridge.attention_recorder import AttentionRecorder

    recorder = AttentionRecorder(tokens)
    patched, positive = rp().regional_prompting(model, clip, layout, "a red circle", recorder=recorder)
    sample(patched, positive, enc(clip, ""), steps=1)
    maps = recorder.maps(8, 8)
    assert maps["omgcat"][:, 4:].abs().max() == 0 and maps["omgcat"][:, :4].min() > 0
    assert maps["omgdog"][:, :6].abs().max() == 0 and maps["omgdog"][:, 6:].min() > 0
    assert maps["circle"].min() > 0, "the global token is attended everywhere"
    picture = render_attention_maps(maps, layout, {label: region for label, (region, _) in tokens.items()})
    assert picture.shape == (1, 64, 3 * 64 + 2 * 4, 3)


# ----------------------------------------------------------------------------- the nodes through ComfyUI


def workflow(checkpoint, regional, boxes=None):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red circle"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": 0,
                "steps": 2,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }
    if regional:
        prompt["7"] = {
            "class_type": "OMGRegions",
            "inputs": {
                "width": 64,
                "height": 64,
                "boxes": boxes
                or '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 0.5, "y1": 1}, {"x0": 0.5, "y0": 0, "x1": 1, "y1": 1}]}',
                "region_prompts": "a omgcat cat\na omgdog dog",
                "region_negative_prompts": "blurry",
                "regions": ["12", 0],
            },
        }
        prompt["11"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
        prompt["12"] = {
            "class_type": "OMGMaskRegion",
            "inputs": {
                "mask": ["11", 0],
                "prompt": "green grass",
                "weight": 0.5,
                "feather": 4,
                "ratio": 1.0,
                "negative_prompt": "",
            },
        }
        prompt["8"] = {
            "class_type": "OMGApplyRegionalAttention",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "regions": ["7", 0],
                "base_prompt": "a red circle",
                "mode": "routed",
                "concepts": ["10", 0],
            },
        }
        for node, lora, chain in (("9", "omg-test-cat.safetensors", None), ("10", "omg-test-dog.safetensors", "9")):
            prompt[node] = {
                "class_type": "OMGLoadConcept",
                "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora, "trigger": "", "strength": 1.0},
            }
            if chain:
                prompt[node]["inputs"]["concepts"] = [chain, 0]
        prompt["5"]["inputs"]["model"] = ["8", 0]
        prompt["5"]["inputs"]["positive"] = ["8", 1]
    return prompt


def test_routed_regional_workflow_runs_and_leaves_plain_workflows_unchanged(host):
    name = CHECKPOINT
    host.run(workflow(name, regional=False))
    before = host.node_outputs("5")[0][0]["samples"].clone()
    host.run(workflow(name, regional=True))
    regional = host.node_outputs("5")[0][0]["samples"]
    preview = host.node_outputs("8")[2][0]
    assert torch.isfinite(regional).all() and not torch.equal(regional, before)
    assert preview.shape == (1, 64, 64, 3)
    host.run(workflow(name, regional=False))
    assert torch.equal(host.node_outputs("5")[0][0]["samples"], before)


def test_bad_boxes_json_fails_the_prompt_with_the_parser_message(host):
    import comfy_host

    with pytest.raises(comfy_host.PromptFailed) as failed:
        host.run(workflow(CHECKPOINT, regional=True, boxes="{oops"))
    errors = [d.get("exception_message", "") for e, d in host.executor.status_messages if e == "execution_error"]
    assert "boxes is not valid JSON" in str(failed.value) + " ".join(errors)


def test_routed_mode_without_concepts_or_on_a_fused_model_is_refused(host):
    import comfy_host

    prompt = workflow(CHECKPOINT, regional=True)
    del prompt["8"]["inputs"]["concepts"]
    with pytest.raises(comfy_host.PromptFailed, match="routed mode has no concepts to route: connect the OMG Load"):
        host.run(prompt)
    prompt = workflow(CHECKPOINT, regional=True)
    prompt["13"] = {
        "class_type": "OMGFuseConcepts",
        "inputs": {"model": ["1", 0], "clip": ["1", 1], "concepts": ["10", 0], "method": "additive"},
    }
    prompt["13"]["inputs"]["regularization"] = 0.001
    prompt["8"]["inputs"]["model"] = ["13", 0]
    with pytest.raises(comfy_host.PromptFailed, match="this MODEL already has cat, dog fused in"):
        host.run(prompt)


def test_a_routed_region_without_a_concept_is_named_in_the_console_and_on_the_node(host, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        outputs = host.run(workflow(CHECKPOINT, regional=True))
    # Region 3 is the mask region "green grass": no trigger word, so the base model draws it.
    assert any("region 3 ('green grass') names no concept's trigger word" in r.getMessage() for r in caplog.records)
    (shown,) = outputs["8"]["images"]  # the node's own preview: the regions with the warning under them
    assert shown["type"] == "temp"
    assert host.node_outputs("8")[2][0].shape == (1, 64, 64, 3)  # the mask_preview output keeps the image size


@pytest.mark.parametrize(
    "boxes, message",
    [
        (
            '{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "weight": 1e39}]}',
            "weight 1e\\+39 is above 10",
        ),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("{oops", "boxes is not valid JSON"),
    ],
)
def test_bad_boxes_are_refused_when_queued_before_anything_runs(host, boxes, message):
    import comfy_host

    # "prompt invalid": refused by the validator, so no loader, fusion or sampler ran.
    with pytest.raises(comfy_host.PromptFailed, match=f"prompt invalid.*{message}"):
        host.run(workflow(CHECKPOINT, regional=True, boxes=boxes))


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("placement_window", 1.5, "placement_window 1.5 is above its maximum 1"),
        ("placement_steps", float("nan"), "placement_steps is nan: give it a finite number"),
        ("placement_separation", -0.5, "placement_separation -0.5 is below its minimum 0"),
    ],
)
def test_placement_settings_out_of_range_are_refused_when_queued(host, name, value, message):
    import comfy_host

    prompt = workflow(CHECKPOINT, regional=True)
    prompt["8"]["inputs"][name] = value
    with pytest.raises(comfy_host.PromptFailed, match=f"prompt invalid.*{message}"):
        host.run(prompt)


def test_a_non_finite_strength_is_refused_when_queued(host):
    import comfy_host

    prompt = workflow(CHECKPOINT, regional=True)
    prompt["9"]["inputs"]["strength"] = float("nan")
    with pytest.raises(comfy_host.PromptFailed, match="prompt invalid.*strength is nan: give it a finite number"):
        host.run(prompt)


# ----------------------------------------------------------------------------- placement


def _sample_noise(model, positive, negative, noise, steps=1, cfg=7.0):
    """Sampling from a given noise (so a crop of it can be sampled on its own)."""
    import comfy.sample

    latent = torch.zeros_like(noise)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent)


@pytest.mark.parametrize("window, cells", [(0.0, (2, 6, 0, 8)), (0.75, (1, 7, 0, 12))])
def test_latent_composition_gives_each_box_its_own_pass_and_leaves_the_rest(sd15, window, cells):
    """One Euler step returns the blended prediction itself: inside the box (its 4 x 8 cells of 8 x 16) it
    is the box's own pass — the plain model with the region's prompt on the noise of its window, the box
    itself or, with a window of 0.75, the 6 x 12 cells around it, cut to the box — and outside the regional
    pass bit for bit."""
    from omg_core.ops.placement import PlacementSettings

    model, clip, _ = sd15
    neg, own = enc(clip, ""), enc(clip, "a blue square")
    layout = spec(Region("a blue square", box=(0.0, 0.25, 0.5, 0.75)), width=128, height=64)
    noise = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(3))
    attention, positive = rp().regional_prompting(model, clip, layout, "a red circle")
    placed, _ = rp().regional_prompting(
        model, clip, layout, "a red circle", placement=PlacementSettings("latent_composition", 1.0, 1.0, window)
    )
    base = _sample_noise(attention, positive, neg, noise)
    out = _sample_noise(placed, positive, neg, noise)
    outside = torch.ones(8, 16, dtype=torch.bool)
    outside[2:6, 0:8] = False
    assert torch.equal(out[..., outside], base[..., outside])
    r0, r1, c0, c1 = cells
    passed = _sample_noise(model, own, neg, noise[..., r0:r1, c0:c1])[..., 2 - r0 : 6 - r0, 0 - c0 : 8 - c0]
    torch.testing.assert_close(out[..., 2:6, 0:8], passed, rtol=1e-3, atol=1e-3)
    assert (out[..., 2:6, 0:8] - base[..., 2:6, 0:8]).abs().max() > 1e-2, "the box's own pass must matter"
    if cells != (2, 6, 0, 8):
        crop = _sample_noise(model, own, neg, noise[..., 2:6, 0:8])
        assert (passed - crop).abs().max() > 1e-2, "the window must be what the box's pass saw"


def test_boxes_own_passes_share_one_unet_call_and_each_keeps_its_own_concept(sd15):
    """Two routed boxes with windows of one size go through the UNet as one batch: each box's cells are
    still its own concept, loaded alone, on its own window with its own prompt — and the same as one pass
    per box."""
    from omg_core.bridge.patching import apply_updates
    from omg_core.ops.placement import PlacementSettings

    model, clip, _ = sd15
    cat, dog = kv_concept(model, "cat", "omgcat", 6), kv_concept(model, "dog", "omgdog", 7)
    boxes = ((0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75))  # 4 x 8 cells each of 8 x 16
    prompts = ("a omgcat cat", "a omgdog dog")
    layout = spec(*(Region(p, box=b) for p, b in zip(prompts, boxes)), width=128, height=64)
    neg = enc(clip, "")
    noise = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(5))
    placement = PlacementSettings("latent_composition", 1.0, 1.0, 0.0)

    def placed(batched):
        patched, positive = rp().regional_prompting(
            model, clip, layout, "a red circle", "routed", [cat, dog], placement=placement
        )
        patched.model_options["model_function_wrapper"].batched = batched
        calls = []
        unet = patched.model.diffusion_model
        hook = unet.register_forward_pre_hook(lambda module, inputs: calls.append(tuple(inputs[0].shape)))
        try:
            return _sample_noise(patched, positive, neg, noise), calls
        finally:
            hook.remove()

    out, calls = placed(True)
    assert calls == [(2, 4, 8, 16), (4, 4, 4, 8)], "the full pass, then both boxes (cond and uncond) in one call"
    for concept, prompt, cols in ((cat, prompts[0], slice(0, 8)), (dog, prompts[1], slice(8, 16))):
        alone, _ = apply_updates(model, clip, concept.scaled_unet(), {})
        want = _sample_noise(alone, enc(clip, prompt), neg, noise[..., 2:6, cols])
        torch.testing.assert_close(out[..., 2:6, cols], want, rtol=1e-3, atol=1e-3)
    one_by_one, calls = placed(False)
    assert calls == [(2, 4, 8, 16), (2, 4, 4, 8), (2, 4, 4, 8)]
    torch.testing.assert_close(out, one_by_one, rtol=1e-4, atol=1e-4)


def attention_concept(model, name, trigger, seed, kv=True):
    """A concept that changes every attention projection of every block (a concept trained with
    target 'every attention projection'), or all but cross-attention k/v."""
    from omg_core.ops.routed_layers import ROUTED_PROJECTIONS, projection_key

    g = torch.Generator().manual_seed(seed)
    base = kv_concept(model, name, trigger, seed) if kv else None
    unet = dict(base.unet) if base else {}
    modules = dict(model.model.named_modules())
    for layer in ap().cross_attention_layers(model):
        block = layer.path.rsplit(".", 1)[0]
        for projection in ROUTED_PROJECTIONS:
            linear = modules[f"diffusion_model.{block}.{projection}"]
            unet[projection_key(block, projection)] = LowRankUpdate(
                torch.randn(linear.out_features, 2, generator=g),
                torch.randn(2, linear.in_features, generator=g),
                scale=0.02,
            )
    return Concept(name=name, triggers=(trigger,), family="sd15", source_format="native", unet=unet)


def test_maps_are_recorded_with_every_patch_the_default_placement_sets_in_routed_mode(sd15):
    """Routed concepts of every projection and the default placement set attn1 patches after the regional
    ones; ComfyUI copies the transformer options for each, and the recorder must be the final copy's."""
    from omg_core.bridge.attention_recorder import AttentionRecorder
    from omg_core.ops.placement import PlacementSettings
    from omg_core.pipelines.attention_maps import model_recorder

    model, clip, _ = sd15
    layout = spec(Region("a omgcat cat", box=LEFT), Region("a omgdog dog", box=(0.75, 0.0, 1.0, 1.0)))
    cat, dog = attention_concept(model, "cat", "omgcat", 1), attention_concept(model, "dog", "omgdog", 2)
    recorder = AttentionRecorder(rp().concept_tokens(model, clip, layout, "routed", [cat, dog]))
    patched, positive = rp().regional_prompting(
        model, clip, layout, "a red circle", "routed", [cat, dog], recorder, PlacementSettings()
    )
    sample(patched, positive, enc(clip, ""), steps=2)
    maps = model_recorder(patched).maps(8, 8)  # what OMG Attention Maps reads: the model's own recorder
    assert maps["omgcat"][:, 4:].abs().max() == 0 and maps["omgcat"][:, :4].min() > 0
    assert maps["omgdog"][:, :6].abs().max() == 0 and maps["omgdog"][:, 6:].min() > 0


def test_routed_boxes_passes_give_each_box_all_of_its_concepts_attention_projections(sd15):
    """Concepts that change self-attention and cross-attention q/out too: in the boxes' own passes (one
    batched call) each box is its concept loaded alone — every projection — on its window."""
    from omg_core.bridge.patching import apply_updates
    from omg_core.ops.placement import PlacementSettings

    model, clip, _ = sd15
    cat, dog = attention_concept(model, "cat", "omgcat", 6), attention_concept(model, "dog", "omgdog", 7)
    boxes = ((0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75))
    prompts = ("a omgcat cat", "a omgdog dog")
    layout = spec(*(Region(p, box=b) for p, b in zip(prompts, boxes)), width=128, height=64)
    neg = enc(clip, "")
    noise = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(5))
    placement = PlacementSettings("latent_composition", 1.0, 1.0, 0.0)
    patched, positive = rp().regional_prompting(
        model, clip, layout, "a red circle", "routed", [cat, dog], placement=placement
    )
    out = _sample_noise(patched, positive, neg, noise)
    kv_only = [
        Concept(
            c.name,
            c.triggers,
            "sd15",
            "native",
            {k: u for k, u in c.unet.items() if ".attn2.to_k" in k or ".attn2.to_v" in k},
        )
        for c in (cat, dog)
    ]
    without, positive = rp().regional_prompting(
        model, clip, layout, "a red circle", "routed", kv_only, placement=placement
    )
    out_kv = _sample_noise(without, positive, neg, noise)
    for concept, prompt, cols in ((cat, prompts[0], slice(0, 8)), (dog, prompts[1], slice(8, 16))):
        alone, _ = apply_updates(model, clip, concept.scaled_unet(), {})
        want = _sample_noise(alone, enc(clip, prompt), neg, noise[..., 2:6, cols])
        torch.testing.assert_close(out[..., 2:6, cols], want, rtol=1e-3, atol=1e-3)
        assert (out_kv[..., 2:6, cols] - want).abs().max() > 1e-2, "the other projections must matter here"
    sample(model, enc(clip, "x"), neg, steps=1)  # leave the shared checkpoint loaded without the concepts


def test_routed_projections_act_where_the_region_is_and_nowhere_else(sd15):
    """A region over the whole image whose prompt is the global one, bound to a concept that changes only
    the projections besides k/v: the concept loaded alone. The same region on the left half: the block's
    projections change on the left cells only, by the concept's own update there."""
    from omg_core.bridge.patching import apply_updates

    model, clip, _ = sd15
    concept = attention_concept(model, "cat", "omgcat", 3, kv=False)
    prompt, neg = "a omgcat cat", enc(clip, "")
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    whole, positive = rp().regional_prompting(
        model, clip, spec(Region(prompt, box=(0.0, 0.0, 1.0, 1.0))), prompt, "routed", [concept]
    )
    alone, _ = apply_updates(model, clip, concept.scaled_unet(), {})
    want = _sample_noise(alone, enc(clip, prompt), neg, noise)
    torch.testing.assert_close(_sample_noise(whole, positive, neg, noise), want, rtol=1e-3, atol=1e-3)
    sample(model, enc(clip, "x"), neg, steps=1)

    layers = ap().cross_attention_layers(model)
    half = spec(Region(prompt, box=LEFT))
    state = ap().RegionalAttention(half, [], projection_updates=ap().routed_projection_updates(layers, [concept]))
    block = layers[0].path.rsplit(".", 1)[0]
    linear = dict(model.model.named_modules())[f"diffusion_model.{block}.attn1.to_q"]
    x = torch.randn(2, 64, linear.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = linear(x)
        got = state.project(block, "attn1.to_q", x, y, 8, 8).view(2, 8, 8, -1)
        update = concept.unet[f"diffusion_model.{block}.attn1.to_q.weight"]
        changed = (y + update.apply(x)).view(2, 8, 8, -1)
    assert torch.equal(got[:, :, 4:], y.view(2, 8, 8, -1)[:, :, 4:]), "outside the region: the base projection"
    torch.testing.assert_close(got[:, :, :4], changed[:, :, :4], rtol=1e-5, atol=1e-5)


def test_separation_keeps_boxes_apart_in_the_full_pass_and_leaves_the_boxes_own_passes(sd15):
    """Latent composition's separation acts in the full pass only, between boxes: with one box it changes
    nothing, bit for bit; with two it changes the image, while each box's cells keep what its own pass
    drew (strength 1 over every step)."""
    from omg_core.ops.placement import PlacementSettings

    model, clip, _ = sd15
    neg = enc(clip, "")
    one = spec(Region("a blue square", box=(0.0, 0.0, 0.5, 0.5)), width=128, height=64)
    two = spec(*one.regions, Region("a red circle", box=(0.5, 0.5, 1.0, 1.0)), width=128, height=64)
    noise = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(5))

    def run(layout, placement, steps=1):
        patched, positive = rp().regional_prompting(model, clip, layout, "an empty background", placement=placement)
        return _sample_noise(patched, positive, neg, noise, steps=steps)

    for layout, acts in ((one, False), (two, True)):
        plain = run(layout, PlacementSettings("latent_composition", 1.0, 0.0, separation=0.0), steps=2)
        apart = run(layout, PlacementSettings("latent_composition", 1.0, 0.0, separation=1.0), steps=2)
        assert torch.equal(apart, plain) != acts
    placed = run(two, PlacementSettings("latent_composition", 1.0, 1.0, 0.0, separation=0.0))
    separated = run(two, PlacementSettings("latent_composition", 1.0, 1.0, 0.0, separation=1.0))
    boxes = torch.zeros(8, 16, dtype=torch.bool)
    boxes[0:4, 0:8] = boxes[4:8, 8:16] = True
    assert torch.equal(separated[..., boxes], placed[..., boxes])
    assert (separated[..., ~boxes] - placed[..., ~boxes]).abs().max() > 1e-3, "separation must act outside the boxes"


def test_placement_at_strength_zero_or_without_regions_changes_nothing(sd15):
    from omg_core.ops.placement import PlacementSettings

    model, clip, _ = sd15
    pos, neg = enc(clip, "a red circle"), enc(clip, "")
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    layout = spec(Region("a blue square", box=(0.0, 0.0, 0.5, 1.0)))
    attention, positive = rp().regional_prompting(model, clip, layout, "a red circle")
    off, _ = rp().regional_prompting(
        model, clip, layout, "a red circle", placement=PlacementSettings("latent_composition", 0.0, 1.0)
    )
    reference = _sample_noise(attention, positive, neg, noise, steps=2)
    assert torch.equal(_sample_noise(off, positive, neg, noise, steps=2), reference)
    # Self-attention layout outside its steps: ComfyUI's own attention, bit for bit; inside them it acts.
    idle, _ = rp().regional_prompting(
        model, clip, layout, "a red circle", placement=PlacementSettings("self_attention", 1.0, 0.0)
    )
    assert torch.equal(_sample_noise(idle, positive, neg, noise, steps=2), reference)
    active, _ = rp().regional_prompting(
        model, clip, layout, "a red circle", placement=PlacementSettings("self_attention", 1.0, 1.0)
    )
    assert (_sample_noise(active, positive, neg, noise, steps=2) - reference).abs().max() > 1e-3
    empty = ap().apply_regional_attention(
        model, spec(), [], placement=PlacementSettings("latent_composition", 1.0, 1.0)
    )
    assert torch.equal(_sample_noise(empty, pos, neg, noise, steps=2), _sample_noise(model, pos, neg, noise, steps=2))


def test_regions_that_would_be_dropped_or_stretched_are_named_through_the_executor(host, caplog):
    """A box below one latent cell, and a mask made for a 128 x 64 image on a 64 x 64 latent."""
    import logging

    prompt = workflow(CHECKPOINT, regional=True)
    prompt["7"]["inputs"].update(
        width=128,
        boxes='{"version": 1, "boxes": [{"x0": 0.6, "y0": 0.6, "x1": 0.65, "y1": 0.65}]}',
        region_prompts="a omgcat cat",
        region_negative_prompts="",
    )
    prompt["11"]["inputs"]["width"] = 128  # the mask region's mask, of that image's aspect
    with caplog.at_level(logging.WARNING):
        host.run(prompt)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "region 1 ('a omgcat cat') covers no whole latent cell (8×8 px) of the 128×64 image" in messages
    assert "the mask regions were made for a 128×64 image, but the latent is 8×8 cells" in messages
