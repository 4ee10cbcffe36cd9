"""Training the toy world's base model: a TAESD autoencoder, then the UNet in two stages.

The UNet learns the world on 64-px scenes first (cheap: 8×8 latents), then
is trained on at the composition size (128 px, ``scenes.COMPOSITION_SIZE``)
on scenes laid out like the composition benchmark's — objects a quarter to
a half of the canvas, gapped, some scenes empty and captioned so — with
every fourth batch still a 64-px one, so it keeps drawing at both sizes.
Measured before that stage existed: asked for base objects in two boxes with
the strongest placement, the 64-px-only model put both in their boxes in
0.38 of images (its objects are drawn at the sizes it was trained on, a
quarter of a 128-px box, and its unconditional model fills the space
between boxes with random objects).

The checkpoint must be one that ComfyUI's ``CheckpointLoaderSimple`` takes
for SD1.5 (``omg_core.toyworld.tiny_checkpoints.SD15_UNET``: one resolution level, so
a 64×64 image is an 8×8 latent everywhere in the network), with the full
CLIP-L text encoder and a TAESD VAE inside. The text encoder is the seeded
random one ``tiny_checkpoints`` builds, frozen: no pretrained weights exist
here, and a frozen random transformer still gives every caption its own,
deterministic conditioning for the UNet to learn to read.

Both networks are trained on ComfyUI's own modules: TAESD is
``comfy.taesd.taesd.TAESD``; the UNet is the ``diffusion_model`` of the
checkpoint as ``comfy.sd.load_checkpoint_guess_config`` loads it, driven
through ``BaseModel.apply_model`` with the model's own discrete noise
schedule, so what is learnt is exactly what ComfyUI's samplers will ask.
Parameters are fp32; the matrix products run under bfloat16 autocast, which
on CPUs with bf16 units is about 2.5× faster and leaves the result to the
fp32 master weights.

TAESD stores its latent scale in the checkpoint (``vae_scale``): the encoder
is trained to produce unit-variance latents, and ``vae_scale`` = SD1.5's
0.18215 makes ComfyUI's latent scaling cancel out, so the UNet sees them
as they are.

ComfyUI is imported lazily inside the functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omg_core.toyworld import scenes as S

SD15_SCALE_FACTOR = 0.18215
CAPTION_DROPOUT = 0.1  # share of training captions replaced by "" so CFG has an unconditional model


@dataclass(frozen=True)
class BaseTrainSettings:
    """Everything that decides the trained weights (with the code)."""

    seed: int = 0
    clip_seed: int = 2  # the seed tiny_checkpoints gives the SD1.5 text encoder
    taesd_steps: int = 1500
    taesd_batch: int = 8
    taesd_lr: float = 8e-4
    n_scenes: int = 12000
    unet_steps: int = 2000
    unet_batch: int = 32
    unet_lr: float = 3e-4
    ema_decay: float = 0.998
    threads: int = 1
    compose_scenes: int = 8000
    # The composition-size stage in rounds of (steps, peak learning rate), each with its own warm-up
    # and cosine decay, each starting from the last one's weights. One round of 1000 steps left the
    # model drawing merged blobs for multi-object captions at 128 px, hence the second, longer one.
    compose_rounds: tuple[tuple[int, float], ...] = ((1000, 1.5e-4), (1500, 2.5e-4))
    compose_batch: int = 16
    compose_low_res_every: int = 4  # every k-th composition-stage batch is a 64-px one

    def unet_stage(self) -> UNetStage:
        return UNetStage(self.unet_steps, self.unet_batch, self.unet_lr, self.seed + 3)

    def compose_stages(self) -> list[UNetStage]:
        return [
            UNetStage(steps, self.compose_batch, lr, self.seed + 4 + i, self.compose_low_res_every)
            for i, (steps, lr) in enumerate(self.compose_rounds)
        ]


@dataclass(frozen=True)
class UNetStage:
    """One UNet training run: its length, batch, peak learning rate and generator seed.

    ``low_res_every`` k > 0: every k-th step draws its batch from the second
    data set (the 64-px latents) instead of the first."""

    steps: int
    batch: int
    lr: float
    seed: int
    low_res_every: int = 0


def _progress(progress, done, total):
    if progress is not None:
        progress(done, total)


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


# ------------------------------------------------------------------ TAESD
def new_taesd(seed: int):
    """An initialised ``comfy.taesd.taesd.TAESD`` (ComfyUI leaves its layers empty).

    Unit-gain convolutions and a zero last convolution in every residual block
    make the untrained network an identity chain with bounded activations."""
    from comfy.taesd.taesd import TAESD, Block

    taesd = TAESD()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in taesd.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * m.weight[0].numel() ** -0.5)
                if m.bias is not None:
                    m.bias.zero_()
        for m in taesd.modules():
            if isinstance(m, Block):
                m.conv[4].weight.zero_()
    return taesd


def _autoencoder_batch(rng: np.random.Generator, pool, n: int) -> torch.Tensor:
    """Half base scenes, half free clutter (see ``scenes.clutter_scene``)."""
    images = [S.sample_base_scene(rng, pool)[0].image for _ in range(n - n // 2)]
    images += [S.clutter_scene(rng) for _ in range(n // 2)]
    return S.to_tensor(images)


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def train_taesd(settings: BaseTrainSettings, progress: Callable[[int, int], None] | None = None):
    """Autoencoder on base scenes and free clutter (the personal objects stay unseen).

    Loss: L1 + L2 on pixels and L1 on pixel differences (edges stay sharp);
    the decoder also reconstructs from slightly noised latents (a denoiser's
    output is never exact); a mild penalty keeps each latent channel near
    zero mean and unit variance."""
    torch.manual_seed(settings.seed)
    taesd = new_taesd(settings.seed)
    rng = np.random.default_rng([settings.seed, 1])
    pool = S.base_caption_pool(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    params = list(taesd.taesd_encoder.parameters()) + list(taesd.taesd_decoder.parameters())
    opt = torch.optim.AdamW(params, lr=settings.taesd_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.taesd_lr, total_steps=settings.taesd_steps, pct_start=0.1)
    for step in range(settings.taesd_steps):
        x = _autoencoder_batch(rng, pool, settings.taesd_batch)
        with _autocast():
            z = taesd.taesd_encoder(x).float()
            y = taesd.taesd_decoder(z + 0.1 * torch.randn(z.shape, generator=gen)).float()
        rec = (y - x).abs().mean() + ((y - x) ** 2).mean()
        rec = rec + sum((gy - gx).abs().mean() for gy, gx in zip(_gradients(y), _gradients(x)))
        reg = z.mean(dim=(0, 2, 3)).pow(2).mean() + (z.std(dim=(0, 2, 3)) - 1).pow(2).mean()
        loss = rec + 0.1 * reg
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        _progress(progress, step + 1, settings.taesd_steps)
    return taesd.eval()


def taesd_state(taesd) -> dict[str, torch.Tensor]:
    """The checkpoint keys (``first_stage_model.`` prefix added by the assembler)."""
    state = {k: v.detach().float() for k, v in taesd.state_dict().items() if k.startswith("taesd_")}
    state["vae_scale"] = torch.tensor(SD15_SCALE_FACTOR)
    state["vae_shift"] = torch.tensor(0.0)
    return state


@torch.no_grad()
def roundtrip(taesd, images: torch.Tensor) -> torch.Tensor:
    """Images [B,3,H,W] in 0..1 through the autoencoder: the best a generator can draw."""
    return taesd.taesd_decoder(taesd.taesd_encoder(images)).clamp(0, 1)


# ------------------------------------------------------------------ data for the UNet
@torch.no_grad()
def encode_captions(clip, captions: list[str]) -> torch.Tensor:
    """[N, 77, 768] conditioning from ComfyUI's own CLIP (the exact tensors sampling will see)."""
    return torch.cat([clip.encode_from_tokens(clip.tokenize(c)).float() for c in captions])


@torch.no_grad()
def encode_scenes(taesd, settings: BaseTrainSettings, pool) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents [N,4,8,8] of ``n_scenes`` seeded 64-px base scenes and their caption indices [N]."""
    rng = np.random.default_rng([settings.seed, 2])
    return _encode(taesd, [S.sample_base_scene(rng, pool) for _ in range(settings.n_scenes)])


@torch.no_grad()
def encode_composition_scenes(taesd, settings: BaseTrainSettings, pool) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents [N,4,16,16] of ``compose_scenes`` seeded composition-size scenes and their
    caption indices [N] (``len(pool)``: the empty scene, ``scenes.EMPTY_CAPTION``)."""
    rng = np.random.default_rng([settings.seed, 5])
    return _encode(taesd, [S.sample_composition_scene(rng, pool) for _ in range(settings.compose_scenes)])


def _encode(taesd, scenes) -> tuple[torch.Tensor, torch.Tensor]:
    latents = []
    for start in range(0, len(scenes), 256):
        with _autocast():
            images = S.to_tensor([s.image for s, _ in scenes[start : start + 256]])
            latents.append(taesd.taesd_encoder(images).float())
    return torch.cat(latents), torch.tensor([i for _, i in scenes])


# ------------------------------------------------------------------ UNet
def prepare_for_training(model_patcher) -> torch.nn.Module:
    """The loaded model's diffusion_model as plain fp32 trainable parameters."""
    inner = model_patcher.model
    dm = inner.diffusion_model
    with torch.no_grad():
        for p in dm.parameters():
            p.data = p.data.detach().float().clone()
            p.requires_grad_(True)
    dm.dtype = torch.float32
    inner.manual_cast_dtype = None
    return dm.train()


def min_snr_weight(sigma: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-γ weights for ε-prediction: min(SNR, γ)/SNR with SNR = 1/σ².

    Uniform ε-loss spends most of a short training run on nearly clean
    latents; capping the weight of high-SNR steps trains the layout-deciding
    noisy steps as much (Hang et al. 2023)."""
    return torch.clamp(gamma * sigma**2, max=1.0)


def train_unet(
    model_patcher,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    conds: torch.Tensor,
    uncond: torch.Tensor,
    settings: BaseTrainSettings,
    stage: UNetStage,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    resume_path: Path | None = None,
    save_every: int = 200,
) -> dict[str, torch.Tensor]:
    """ε-prediction training through ``BaseModel.apply_model``; returns the EMA weights.

    ``data``: (latents, caption indices into ``conds``) per data set, the
    second one drawn every ``stage.low_res_every``-th step; starts from the
    weights the model holds (the 64-px stage starts from the initial ones).
    With ``resume_path`` the whole state (weights, EMA, optimizer, generator,
    step) is saved every ``save_every`` steps and picked up again, so an
    interrupted run ends with the weights the uninterrupted one would have."""
    inner = model_patcher.model
    dm = prepare_for_training(model_patcher)
    ms = inner.model_sampling
    sigmas = ms.sigmas.float()
    gen = torch.Generator().manual_seed(stage.seed)
    params = [p for p in dm.parameters()]
    opt = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.99), weight_decay=0.01)
    warmup = max(1, stage.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, stage.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = {k: v.detach().clone() for k, v in dm.state_dict().items()}
    if stage.low_res_every and len(data) < 2:
        raise ValueError("a stage with low_res_every needs a second data set (the 64-px latents)")
    started, running, start = time.time(), None, 0
    if resume_path is not None and Path(resume_path).exists():
        state = torch.load(resume_path, weights_only=False)
        dm.load_state_dict(state["weights"])
        ema, start, running = state["ema"], state["step"], state["running"]
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
    for step in range(start, stage.steps):
        low_res = stage.low_res_every > 0 and step % stage.low_res_every == stage.low_res_every - 1
        latents, caption_index = data[1 if low_res else 0]
        idx = torch.randint(0, latents.shape[0], (stage.batch,), generator=gen)
        x0 = latents[idx]
        t = torch.randint(0, len(sigmas), (stage.batch,), generator=gen)
        sigma = sigmas[t]
        noise = torch.randn(x0.shape, generator=gen)
        x_t = x0 + sigma.view(-1, 1, 1, 1) * noise
        cond = conds[caption_index[idx]]
        drop = torch.rand(stage.batch, generator=gen) < CAPTION_DROPOUT
        cond = torch.where(drop.view(-1, 1, 1), uncond.expand_as(cond), cond)
        with _autocast():
            denoised = inner.apply_model(x_t, sigma, c_crossattn=cond).float()
        eps = (x_t - denoised) / sigma.view(-1, 1, 1, 1)
        per_sample = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (min_snr_weight(sigma) * per_sample).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in dm.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if log is not None and (step % 100 == 0 or step == stage.steps - 1):
            log(f"unet step {step + 1}/{stage.steps} loss {running:.4f} ({time.time() - started:.0f} s)")
        _progress(progress, step + 1, stage.steps)
        if resume_path is not None and (step + 1) % save_every == 0 and step + 1 < stage.steps:
            state = {"weights": dm.state_dict(), "ema": ema, "step": step + 1, "running": running}
            state.update(opt=opt.state_dict(), sched=sched.state_dict(), gen=gen.get_state())
            torch.save(state, f"{resume_path}.tmp")
            Path(f"{resume_path}.tmp").replace(resume_path)
    if resume_path is not None:
        Path(resume_path).unlink(missing_ok=True)
    dm.eval()
    with torch.no_grad():
        dm.load_state_dict(ema)
    return {k: v.detach().clone() for k, v in dm.state_dict().items()}
