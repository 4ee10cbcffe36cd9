"""Plain helpers for tests that sample with ComfyUI: prompts encoded and
latents sampled the way ComfyUI's own nodes do it.

A module of its own (not conftest.py) because each test layer may have a
conftest of its own, and ``from conftest import …`` would find whichever
was imported first."""


def encode(clip, text: str):
    """CONDITIONING for a prompt, as CLIPTextEncode makes it."""
    tokens = clip.tokenize(text)
    return clip.encode_from_tokens_scheduled(tokens)


def sample(model, positive, negative, width=64, height=64, steps=4, seed=0, batch=1, cfg=7.0):
    """Latent from ComfyUI's own KSampler path (``nodes.common_ksampler``)."""
    import nodes
    import torch

    latent = {"samples": torch.zeros(batch, 4, height // 8, width // 8)}
    return nodes.common_ksampler(model, seed, steps, cfg, "euler", "normal", positive, negative, latent)[0]["samples"]
