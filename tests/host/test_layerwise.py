"""Layer-wise ED-LoRA embeddings through the regional attention patch: each
cross-attention layer reads the prompt encoded with its own layer embedding,
for the global prompt and region prompts, checked against a direct
computation on an SD1.5-layout UNet with Mix-of-Show's 16 layers; plain
prompts are untouched; other layer counts follow the documented rule."""

import pytest
import torch
from format_fixtures import SD15_TE, write_edlora
from sampling import encode, sample

from omg_core.model.concept import TokenEmbedding
from omg_core.ops.regions import Region, RegionSpec
from omg_core.toyworld.tiny_checkpoints import SD15_FULL_UNET, build_sd15_inprocess

PROMPT = "a photo of <cat1> <cat2> on a sofa"

# SD1.5's layout (channel_mult 1,2,4,4; two res blocks; attention on the first
# three levels) at 32 channels: 6 down, 1 middle, 9 up cross-attention layers.
SD15_16_UNET = {**SD15_FULL_UNET, "model_channels": 32, "num_heads": 2, "image_size": 32}


@pytest.fixture(scope="module")
def sd15_16(comfy):
    return build_sd15_inprocess(SD15_16_UNET, seed=3)


@pytest.fixture(scope="module")
def edlora(tmp_path_factory, sd15_16, sd15):
    """A Mix-of-Show ED-LoRA file (embeddings + text-encoder LoRA), its
    concept, and the CLIP the concept's prompts are encoded with."""
    from omg_core.bridge.binding import load_concept
    from omg_core.pipelines.regional import concept_clip

    fx = write_edlora(tmp_path_factory.mktemp("edlora") / "cat.pth", layers=(), te_layers=SD15_TE, with_proj_in=False)
    concept = load_concept(fx.path, sd15_16, sd15[1])
    return fx, concept, concept_clip(sd15_16, sd15[1], concept)


def layers_of(model):
    from omg_core.bridge.attention_patch import cross_attention_layers

    return cross_attention_layers(model)


@pytest.fixture(scope="module")
def direct(edlora):
    """The prompt encoded with each layer's vectors as ordinary tokens, one
    encoding per layer — the computation the layer-wise path must match."""
    from omg_core.bridge.trigger_tokens import clip_with_embeddings

    fx, _, clip_with_te = edlora
    out = []
    for layer in range(16):
        plain = [TokenEmbedding(t, "clip_l", v[layer : layer + 1]) for t, v in fx.embeddings.items()]
        clip = clip_with_embeddings(clip_with_te, plain)
        out.append(clip.encode_from_tokens(clip.tokenize(PROMPT)))
    return out


def recording(model):
    """A clone whose attn2 blocks record the k/v they receive, per layer order."""
    import comfy.ldm.modules.attention as comfy_attention

    seen = {}
    clone = model.clone()
    for layer in layers_of(model):

        def record(q, k, v, extra_options, order=layer.order):
            seen[order] = (k.clone(), v.clone(), list(extra_options["cond_or_uncond"]))
            return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"])

        clone.set_model_attn2_replace(record, *layer.key)
    return clone, seen


def run_unet(model, ctx, cond_or_uncond):
    to = dict(model.model_options["transformer_options"])
    to["cond_or_uncond"] = list(cond_or_uncond)
    x = torch.randn(ctx.shape[0], 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return model.model.apply_model(x, torch.full((x.shape[0],), 0.5), c_crossattn=ctx, transformer_options=to)


def count_encodes(clip, monkeypatch):
    calls = []
    original = clip.encode_from_tokens

    def counted(tokens, *args, **kwargs):
        calls.append(sum(len(chunks) for chunks in tokens.values()))
        return original(tokens, *args, **kwargs)

    monkeypatch.setattr(clip, "encode_from_tokens", counted)
    return calls


def test_each_layer_attends_to_the_global_prompt_encoded_with_its_own_layer_embedding(sd15_16, edlora, direct):
    from omg_core.pipelines.regional import regional_prompting

    fx, concept, clip = edlora
    assert {e.token: e.vectors.shape for e in concept.embeddings} == {t: (16, 1, 768) for t in fx.embeddings}
    recorded, seen = recording(sd15_16)
    patched, positive = regional_prompting(recorded, clip, RegionSpec(64, 64, ()), PROMPT)
    negative = clip.encode_from_tokens(clip.tokenize(""))
    run_unet(patched, torch.cat([positive[0][0], negative]), [0, 1])
    layers = layers_of(sd15_16)
    assert len(layers) == 16 and sorted(seen) == list(range(16))
    with torch.no_grad():
        for layer in layers:
            k, v, kinds = seen[layer.order]
            assert kinds == [0, 1]
            ctx = direct[layer.order]
            torch.testing.assert_close(k[0:1], layer.module.to_k(ctx), rtol=0, atol=1e-5)
            torch.testing.assert_close(v[0:1], layer.module.to_v(ctx), rtol=0, atol=1e-5)
            assert torch.equal(k[1:2], layer.module.to_k(negative))  # the unconditional half is untouched
            if layer.order:  # and it is not layer 0's encoding
                other = layer.module.to_k(direct[0])
                assert (k[0:1] - other).abs().max() > 1e-3


def test_a_region_prompt_gets_per_layer_keys(sd15_16, edlora, direct):
    from omg_core.bridge.attention_patch import COND
    from omg_core.pipelines.regional import regional_prompting

    fx, _, clip = edlora
    spec = RegionSpec(64, 64, (Region(PROMPT, box=(0.0, 0.0, 0.5, 1.0)),))
    patched, _ = regional_prompting(sd15_16, clip, spec, "a sofa")
    replacements = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    with torch.no_grad():
        for layer in layers_of(sd15_16):
            state = replacements[layer.key].state
            assert state.global_layers is None  # the global prompt has no layer-wise token
            k, v = state.region_kv(layer, 0, COND, torch.device("cpu"), torch.float32)
            ctx = direct[layer.order]
            torch.testing.assert_close(k, layer.module.to_k(ctx), rtol=0, atol=1e-5)
            torch.testing.assert_close(v, layer.module.to_v(ctx), rtol=0, atol=1e-5)


def test_sixteen_distinct_layer_embeddings_are_encoded_in_one_clip_call(sd15_16, edlora, monkeypatch):
    from omg_core.ops.layerwise import layer_contexts

    _, _, clip = edlora
    calls = count_encodes(clip, monkeypatch)
    contexts = layer_contexts(clip, PROMPT, layers_of(sd15_16))
    assert calls == [16] and contexts.shape == (16, 77, 768)


def test_layers_with_equal_embeddings_share_one_encoding(sd15_16, sd15, monkeypatch):
    from omg_core.bridge.trigger_tokens import clip_with_embeddings
    from omg_core.ops.layerwise import layer_contexts

    two = torch.randn(2, 1, 768, generator=torch.Generator().manual_seed(1)) * 0.02
    vectors = two.repeat_interleave(8, dim=0)  # layers 0–7 one embedding, 8–15 another
    clip = clip_with_embeddings(sd15[1], [TokenEmbedding("<dog1>", "clip_l", vectors)])
    calls = count_encodes(clip, monkeypatch)
    contexts = layer_contexts(clip, "a <dog1> dog", layers_of(sd15_16))
    assert calls == [2]
    assert all(torch.equal(contexts[i], contexts[0]) for i in range(8))
    assert all(torch.equal(contexts[i], contexts[8]) for i in range(8, 16))
    assert not torch.equal(contexts[0], contexts[8])


def test_plain_prompts_cost_nothing_extra_and_sample_bit_identically(sd15, edlora, monkeypatch):
    from omg_core.ops.layerwise import layer_contexts
    from omg_core.pipelines.regional import regional_prompting

    model, _, _ = sd15
    _, _, clip = edlora  # a CLIP that knows layer-wise tokens, given a prompt without them
    calls = count_encodes(clip, monkeypatch)
    assert layer_contexts(clip, "a photo of a cat", layers_of(model)) is None and calls == []
    patched, positive = regional_prompting(model, clip, RegionSpec(64, 64, ()), "a photo of a cat")
    plain = encode(clip, "a photo of a cat")
    assert torch.equal(positive[0][0], plain[0][0])
    state = next(iter(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values())).state
    assert state.global_layers is None
    negative = encode(clip, "")
    assert torch.equal(sample(patched, positive, negative, steps=1), sample(model, plain, negative, steps=1))


def test_a_model_with_fewer_layers_uses_the_documented_section_rule(sd15, edlora, direct):
    from omg_core.ops.layerwise import layer_map
    from omg_core.pipelines.regional import regional_prompting

    fx, _, clip = edlora
    model = sd15[0]
    layers = layers_of(model)
    assert [layer.key[0] for layer in layers] == ["input", "middle", "output", "output"]
    assert layer_map(layers, 16, 768) == [0, 6, 7, 11]
    recorded, seen = recording(model)
    patched, positive = regional_prompting(recorded, clip, RegionSpec(64, 64, ()), PROMPT)
    run_unet(patched, torch.cat([positive[0][0], clip.encode_from_tokens(clip.tokenize(""))]), [0, 1])
    with torch.no_grad():
        for layer, embedding_layer in zip(layers, [0, 6, 7, 11]):
            ctx = direct[embedding_layer]
            torch.testing.assert_close(seen[layer.order][0][0:1], layer.module.to_k(ctx), rtol=0, atol=1e-5)
    negative = encode(clip, "")
    assert torch.isfinite(sample(patched, positive, negative, steps=1)).all()


def test_layer_wise_tokens_on_sdxl_are_refused_with_a_clear_message(sdxl_inprocess):
    from omg_core.ops.layerwise import layer_map

    with pytest.raises(ValueError, match="have no SDXL form — use them with an SD1.5 checkpoint"):
        layer_map(layers_of(sdxl_inprocess), 16, 768)


def test_tokens_with_different_layer_counts_in_one_prompt_are_refused(sd15, sd15_16):
    from omg_core.bridge.trigger_tokens import clip_with_embeddings
    from omg_core.ops.layerwise import layer_contexts

    clip = clip_with_embeddings(
        sd15[1],
        [
            TokenEmbedding("<a1>", "clip_l", torch.zeros(16, 1, 768)),
            TokenEmbedding("<b1>", "clip_l", torch.zeros(8, 1, 768)),
        ],
    )
    with pytest.raises(ValueError, match=r"different layer counts \(\[8, 16\]\): use concepts trained for the same"):
        layer_contexts(clip, "<a1> and <b1>", layers_of(sd15_16))


def test_per_layer_global_features_of_the_wrong_layer_count_are_refused(sd15):
    from omg_core.bridge.attention_patch import apply_regional_attention

    with pytest.raises(ValueError, match="this model has 4 cross-attention layers: encode them for this model"):
        apply_regional_attention(sd15[0], RegionSpec(64, 64, ()), [], global_layers=torch.zeros(16, 77, 768))
