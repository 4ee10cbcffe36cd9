"""Generating toy-world images with ComfyUI's own loader, text encoder, sampler and VAE.

Every measurement of the toy world (does a prompt produce what it names, does
a concept stay in its box) samples exactly as a ComfyUI workflow would: the
checkpoint through ``comfy.sd.load_checkpoint_guess_config``, prompts through
``CLIP.encode_from_tokens_scheduled`` (what CLIPTextEncode calls), latents
through ``comfy.sample.sample`` (what KSampler calls) and pixels through
``VAE.decode``. One call samples a batch of seeds for one prompt set.

ComfyUI is imported lazily inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omg_core.toyworld import scenes as S

SAMPLER = "euler"
SCHEDULER = "normal"
STEPS = 16
CFG = 5.0


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = STEPS
    cfg: float = CFG
    sampler: str = SAMPLER
    scheduler: str = SCHEDULER


def load_toyworld(path=None, bf16: bool = False):
    """(MODEL, CLIP, VAE) of the toy-world checkpoint as ComfyUI loads it.

    ``bf16`` runs the UNet in bfloat16 (benchmarks: ~2× faster on CPUs with
    bf16 units); tests keep ComfyUI's default dtype."""
    import comfy.sd

    from omg_core.toyworld.checkpoint import toyworld_checkpoint

    options = {"dtype": torch.bfloat16} if bf16 else {}
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(path or toyworld_checkpoint()), output_vae=True, output_clip=True, model_options=options
    )
    return model, clip, vae


def encode(clip, text: str):
    """CONDITIONING for ``text``, as ComfyUI's CLIPTextEncode makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text), show_pbar=False)


@torch.no_grad()
def sample(model, positive, negative, seed: int, batch: int, settings: SamplerSettings = SamplerSettings(), size=64):
    """Latents [batch, 4, size/8, size/8]: ``batch`` images from one seed, as KSampler would."""
    import comfy.sample

    latent = torch.zeros(batch, 4, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(
        model,
        noise,
        settings.steps,
        settings.cfg,
        settings.sampler,
        settings.scheduler,
        positive,
        negative,
        latent,
        disable_pbar=True,
        seed=seed,
    )


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in 0..1 (ComfyUI's IMAGE is [B, H, W, 3])."""
    images = vae.decode(latents)
    return images.reshape(-1, *images.shape[-3:]).movedim(-1, 1).float().clamp(0, 1)


def generate(
    model, clip, vae, prompt: str, seed: int, batch: int, settings: SamplerSettings = SamplerSettings(), size: int = 64
):
    """Images [batch, 3, size, size] for one prompt (negative: the empty prompt)."""
    latents = sample(model, encode(clip, prompt), encode(clip, ""), seed, batch, settings, size)
    return decode(vae, latents)


# ------------------------------------------------------------------ locating objects
def locate(images: torch.Tensor, threshold: float = 0.18, pad: float = 0.15) -> torch.Tensor:
    """The normalised box [B, 4] around the largest non-background blob of each image.

    Background = the median colour of the image border; a pixel is foreground
    when a channel differs from it by more than ``threshold`` (the blobs of
    ``outcomes.foreground_blobs``). Used where a prompt does not say where its
    object goes (a plain base prompt)."""
    from omg_core.toyworld.outcomes import foreground_blobs

    boxes = []
    for img in images:
        blobs = foreground_blobs(img, threshold, pad, min_area=0.0)
        boxes.append(list(max(blobs, key=lambda b: int(b[1].sum()))[0]) if blobs else [0.0, 0.0, 1.0, 1.0])
    return torch.tensor(boxes, dtype=torch.float32)


def prompt_accuracy(
    model,
    clip,
    vae,
    detector,
    labels=S.BASE_OBJECTS,
    seeds: int = 4,
    seed: int = 0,
    settings=SamplerSettings(),
    size: int = S.IMAGE_SIZE,
):
    """Share of ``size``-px images whose main object the detector names as the prompt did, per label."""
    out = {}
    for i, label in enumerate(labels):
        images = generate(model, clip, vae, S.caption([label]), seed + i, seeds, settings, size)
        probs = detector.probabilities(images, locate(images))
        from omg_core.toyworld.detector import CLASSES

        out[label] = float((probs.argmax(-1) == CLASSES.index(label)).float().mean())
    return out
