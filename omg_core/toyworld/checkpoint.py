"""The toy world's checkpoint: shipped weights in, a ComfyUI checkpoint out.

What is shipped and what is regenerated, and why:

* the trained UNet (26 M parameters) is stored int8 with one scale per output
  channel (≈26 MB) and the trained TAESD in fp16 (≈5 MB), in
  ``assets/toyworld/base_weights.safetensors``. They are the result of ~30 CPU
  minutes of training; a newcomer should not wait for them, and together
  they stay under the ~40 MB a repository can carry per version;
* the CLIP-L text encoder (123 M parameters, ≈250 MB) was never trained: it
  is the seeded random encoder of ``omg_core.toyworld.tiny_checkpoints``, so it is
  rebuilt from its seed. Because the UNet learnt to read *that* encoder's
  output, a rebuilt encoder is checked against reference outputs on probe
  token sequences recorded at training time (``manifest.json``); if a
  library update ever changed the seeded initialisation, assembly stops with
  a message instead of producing a model that draws nonsense.

``toyworld_checkpoint()`` writes the assembled fp16 checkpoint (UNet
dequantised, so ComfyUI loads it like any SD1.5 file) under ``.cache/models``
once and returns its path. Needs ``transformers`` and ComfyUI's TAESD keys
only as names; ComfyUI itself is not imported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

ASSET_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "toyworld"
WEIGHTS = ASSET_DIR / "base_weights.safetensors"
MANIFEST = ASSET_DIR / "manifest.json"
CHECKPOINT_STEM = "omg-toyworld-sd15"

# CLIP BPE token ids of three probe prompts, so no tokenizer is needed to replay them.
PROBE_TOKENS = (
    (49406, 320, 736, 7117, 49407),  # "a red circle"
    (49406, 320, 1746, 3999, 537, 320, 1901, 14615, 49407),  # "a blue square and a green triangle"
    (49406, 49407),  # the empty prompt
)
PROBE_DIMS = 16
PROBE_ATOL = 2e-3


# ------------------------------------------------------------------ quantised storage
def quantise_unet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """int8 with a per-output-channel scale for matrices and kernels; fp16 for the rest."""
    out = {}
    for k, v in state.items():
        v = v.detach().float()
        if v.ndim >= 2 and v.numel() >= 4096:
            rows = v.reshape(v.shape[0], -1)
            scale = rows.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            out[f"unet_q.{k}"] = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(v.shape)
            out[f"unet_s.{k}"] = scale.to(torch.float32)
        else:
            out[f"unet_f.{k}"] = v.to(torch.float16)
    return out


def dequantise_unet(stored: dict[str, torch.Tensor], dtype=torch.float16) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in stored.items():
        if k.startswith("unet_q."):
            key = k.removeprefix("unet_q.")
            scale = stored[f"unet_s.{key}"].float()
            out[key] = (v.float() * scale.view(-1, *([1] * (v.ndim - 1)))).to(dtype)
        elif k.startswith("unet_f."):
            out[k.removeprefix("unet_f.")] = v.to(dtype)
    return out


def save_weights(unet: dict[str, torch.Tensor], taesd: dict[str, torch.Tensor], path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    stored = quantise_unet(unet)
    stored.update({f"taesd.{k}": v.detach().to(torch.float16).reshape(v.shape) for k, v in taesd.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in stored.items()}, str(path), metadata={k: str(v) for k, v in metadata.items()}
    )


def load_weights(path: Path = WEIGHTS) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(UNet state fp16, TAESD state fp16, metadata) from the shipped file."""
    from safetensors import safe_open

    if not Path(path).exists():
        raise ValueError(
            f"the toy-world weights are missing ({path}); they ship with the repository, or retrain them with "
            "`python scripts/train_toyworld.py`"
        )
    with safe_open(str(path), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata() or {})
    taesd = {k.removeprefix("taesd."): v for k, v in stored.items() if k.startswith("taesd.")}
    return dequantise_unet(stored), taesd, metadata


# ------------------------------------------------------------------ the text encoder
def build_text_encoder(seed: int) -> dict[str, torch.Tensor]:
    from omg_core.toyworld.tiny_checkpoints import build_clip_state

    return build_clip_state("l", seed)


@torch.no_grad()
def probe_text_encoder(state: dict[str, torch.Tensor]) -> list[list[float]]:
    """The first ``PROBE_DIMS`` features of the token-averaged last hidden state
    for each probe sequence, computed in fp32 with transformers' CLIPTextModel."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        vocab_size=49408,
        hidden_act="quick_gelu",
        projection_dim=768,
    )
    model = CLIPTextModel(config)
    own = model.state_dict()
    load = {}
    for k, v in state.items():
        key = k if k in own else ("text_model." + k if "text_model." + k in own else k.removeprefix("text_model."))
        load[key] = v.float()
    model.load_state_dict(load, strict=False)
    model.eval()
    out = []
    for ids in PROBE_TOKENS:
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        out.append([round(float(x), 5) for x in hidden.mean(0)[:PROBE_DIMS]])
    return out


def check_text_encoder(state: dict[str, torch.Tensor], reference: list[list[float]], seed: int) -> None:
    probe = torch.tensor(probe_text_encoder(state))
    ref = torch.tensor(reference)
    err = float((probe - ref).abs().max())
    if probe.shape != ref.shape or err > PROBE_ATOL:
        raise ValueError(
            f"the text encoder rebuilt from seed {seed} does not match the one the toy world was trained with "
            f"(probe outputs differ by {err:.3g} > {PROBE_ATOL}); the seeded initialisation changed with a library "
            "version — install the versions in requirements.txt or retrain with `python scripts/train_toyworld.py`"
        )


def probe_digest(reference: list[list[float]]) -> str:
    return hashlib.sha256(json.dumps(reference).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ assembly
def checkpoint_state(unet: dict, taesd: dict, clip: dict) -> dict[str, torch.Tensor]:
    state = {f"model.diffusion_model.{k}": v.to(torch.float16) for k, v in unet.items()}
    state.update(
        {f"first_stage_model.{k}": v.float() if v.ndim == 0 else v.to(torch.float16) for k, v in taesd.items()}
    )
    for k, v in clip.items():
        if not k.startswith("text_model."):
            k = "text_model." + k
        state[f"cond_stage_model.transformer.{k}"] = v.to(torch.float16)
    return state


def write_checkpoint(path: Path, unet: dict, taesd: dict, clip_seed: int, reference: list[list[float]] | None) -> Path:
    from safetensors.torch import save_file

    clip = build_text_encoder(clip_seed)
    if reference is not None:
        check_text_encoder(clip, reference, clip_seed)
    state = checkpoint_state(unet, taesd, clip)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"omg_toyworld": "1"})
    tmp.replace(path)
    return path


def read_manifest() -> dict:
    if not MANIFEST.exists():
        raise ValueError(f"{MANIFEST} is missing; retrain with `python scripts/train_toyworld.py`")
    return json.loads(MANIFEST.read_text())


def toyworld_checkpoint(directory: Path | None = None) -> Path:
    """Path of the assembled toy-world SD1.5 checkpoint, written on first use."""
    from omg_core.toyworld.tiny_checkpoints import default_cache_dir

    manifest = read_manifest()
    digest = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()[:12] if WEIGHTS.exists() else "missing"
    directory = Path(directory or default_cache_dir() / "models")
    path = directory / f"{CHECKPOINT_STEM}-{digest}.safetensors"
    if not path.exists():
        unet, taesd, _ = load_weights(WEIGHTS)
        write_checkpoint(path, unet, taesd, int(manifest["clip_seed"]), manifest["clip_probe"])
    return path
