"""The small models the suite stands on are what ComfyUI takes them for."""

import pytest
import torch
from sampling import encode, sample


def test_tiny_sd15_checkpoint_is_detected_as_sd15_with_finite_outputs(sd15):
    import comfy.supported_models

    model, clip, vae = sd15
    assert isinstance(model.model.model_config, comfy.supported_models.SD15)
    a, b = encode(clip, "a red circle"), encode(clip, "a blue square")
    assert torch.isfinite(a[0][0]).all()
    assert not torch.allclose(a[0][0], b[0][0]), "different prompts must give different conditioning"
    latent = sample(model, a, encode(clip, ""))
    image = vae.decode(latent)
    assert image.shape == (1, 64, 64, 3)
    assert torch.isfinite(image).all()


def test_inprocess_sdxl_samples_finite_latents(sdxl_inprocess):
    import comfy.model_base

    from omg_core.toyworld.tiny_checkpoints import sdxl_conditioning

    assert isinstance(sdxl_inprocess.model, comfy.model_base.SDXL)
    latent = sample(sdxl_inprocess, sdxl_conditioning(seed=1), sdxl_conditioning(seed=2))
    assert torch.isfinite(latent).all()


@pytest.mark.slow
def test_generated_sdxl_checkpoint_is_detected_as_sdxl_family(comfy):
    """The smallest SDXL-family layout ComfyUI detects (~3 GB with both text
    encoders), written by the same builder as the SD1.5 one."""
    import comfy.sd
    import comfy.supported_models

    from omg_core.toyworld.tiny_checkpoints import tiny_checkpoint

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint("sdxl")))
    assert isinstance(model.model.model_config, comfy.supported_models.SDXL)
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a red circle"), return_pooled=True)
    assert cond.shape[-1] == 2048 and pooled.shape[-1] == 1280
    assert torch.isfinite(cond).all()
    positive = [[cond, {"pooled_output": pooled, "width": 64, "height": 64}]]
    latent = sample(model, positive, positive)
    assert torch.isfinite(vae.decode(latent)).all()
