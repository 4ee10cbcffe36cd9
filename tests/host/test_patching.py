"""Updates reach the model as ComfyUI weight patches on clones, and only there."""

import pytest
import torch

from omg_core.bridge.patching import apply_updates
from omg_core.model.concept import DenseUpdate, KroneckerUpdate, LowRankUpdate

K_KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
V_KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
Q_KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_q.weight"
TE_KEY = "clip_l.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight"


def _live(patcher, key):
    """The tensor the module computes with right now."""
    return patcher.model.state_dict()[key].detach().clone().float()


def _updates(seed):
    g = torch.Generator().manual_seed(seed)
    lora = LowRankUpdate(torch.randn(320, 4, generator=g), torch.randn(4, 768, generator=g), scale=0.05)
    lokr = KroneckerUpdate(torch.randn(4, 8, generator=g), torch.randn(80, 96, generator=g), scale=0.01)
    dense = DenseUpdate(torch.randn(320, 320, generator=g) * 0.01, scale=2.0)
    te = LowRankUpdate(torch.randn(768, 2, generator=g), torch.randn(2, 768, generator=g), scale=0.02)
    return {K_KEY: lora, V_KEY: lokr, Q_KEY: dense}, {TE_KEY: te}


@pytest.fixture
def clean_load(sd15):
    """Leave the shared checkpoint as it was: base weights loaded, no clone patched in."""
    import comfy.model_management as mm

    yield
    model, clip, _ = sd15
    mm.load_models_gpu([model, clip.patcher])


def test_patched_weights_equal_base_plus_update_and_inputs_stay_unpatched(sd15, clean_load):
    import comfy.model_management as mm

    model, clip, _ = sd15
    mm.load_models_gpu([model, clip.patcher])
    base = {k: _live(model, k) for k in (K_KEY, V_KEY, Q_KEY)}
    base_te = _live(clip.patcher, TE_KEY)
    unet, te = _updates(0)

    m1, c1 = apply_updates(model, clip, unet, te)
    assert m1 is not model and c1 is not clip
    assert model.patches == {} and clip.patcher.patches == {}, "inputs must not receive patches"
    assert all(len(v) == 1 for v in m1.patches.values()), "one patch per layer"

    mm.load_models_gpu([m1, c1.patcher])
    for key, update in unet.items():
        expected = base[key] + update.dense().reshape(base[key].shape)
        torch.testing.assert_close(_live(m1, key), expected, rtol=1e-4, atol=1e-5)
    te_weight = _live(c1.patcher, TE_KEY)
    torch.testing.assert_close(te_weight, base_te + te[TE_KEY].dense(), rtol=2e-3, atol=2e-3)

    # Loading the unpatched original restores the base weights exactly.
    mm.load_models_gpu([model, clip.patcher])
    for key in unet:
        assert torch.equal(_live(model, key), base[key])
    assert torch.equal(_live(clip.patcher, TE_KEY), base_te)


def test_two_clones_of_one_checkpoint_do_not_see_each_others_patches(sd15, clean_load):
    import comfy.model_management as mm

    model, _, _ = sd15
    mm.load_models_gpu([model])
    base = _live(model, K_KEY)
    a, _ = _updates(1)
    b, _ = _updates(2)
    ma, _ = apply_updates(model, None, {K_KEY: a[K_KEY]}, {})
    mb, _ = apply_updates(model, None, {K_KEY: b[K_KEY]}, {})

    mm.load_models_gpu([ma])
    torch.testing.assert_close(_live(ma, K_KEY), base + a[K_KEY].dense(), rtol=1e-4, atol=1e-5)
    mm.load_models_gpu([mb])
    torch.testing.assert_close(_live(mb, K_KEY), base + b[K_KEY].dense(), rtol=1e-4, atol=1e-5)
    mm.load_models_gpu([ma])
    torch.testing.assert_close(_live(ma, K_KEY), base + a[K_KEY].dense(), rtol=1e-4, atol=1e-5)
    ma.unpatch_model()
    assert torch.equal(_live(model, K_KEY), base), "unpatching restores the base weight"


def test_several_updates_on_one_layer_are_summed(sd15, clean_load):
    import comfy.model_management as mm

    model, _, _ = sd15
    mm.load_models_gpu([model])
    base = _live(model, K_KEY)
    a, _ = _updates(3)
    b, _ = _updates(4)
    lokr = KroneckerUpdate(torch.randn(4, 8), torch.randn(80, 96), scale=0.01)
    m, _ = apply_updates(model, None, {K_KEY: (a[K_KEY], b[K_KEY], lokr)}, {})
    mm.load_models_gpu([m])
    expected = base + a[K_KEY].dense() + b[K_KEY].dense() + lokr.dense()
    torch.testing.assert_close(_live(m, K_KEY), expected, rtol=1e-4, atol=1e-5)


def test_update_for_a_layer_the_model_lacks_is_refused(sd15):
    model, clip, _ = sd15
    bad = {"diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": _updates(0)[0][K_KEY]}
    with pytest.raises(ValueError, match="do not exist in this model"):
        apply_updates(model, clip, bad, {})


def test_update_of_the_wrong_shape_is_refused(sd15):
    model, _, _ = sd15
    wrong = LowRankUpdate(torch.randn(640, 2), torch.randn(2, 2048))
    with pytest.raises(ValueError, match="does not fit a weight"):
        apply_updates(model, None, {K_KEY: wrong}, {})


def test_non_finite_update_is_refused(sd15):
    model, _, _ = sd15
    up = torch.randn(320, 2)
    up[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        apply_updates(model, None, {K_KEY: LowRankUpdate(up, torch.randn(2, 768))}, {})
    assert model.patches == {}
