"""Train one concept as a k/v-only LoRA whose down-projections come from the shared basis.

Concepts trained here are meant to be *added* later. Two things serve that:
only the UNet cross-attention k/v projections are adapted (the only layers
that read the prompt, so a concept changes nothing its words do not reach),
and every down-projection is a fixed block of rows of the shared orthonormal
basis (``omg_core.model.basis``), so concepts trained in different slots read from
exactly orthogonal input subspaces (A_i A_jᵀ = 0) and their updates are
orthogonal matrices. Only the up-projections (initialised to zero) are
trained; ``down="free"`` trains a standard LoRA instead, for comparison.
``form`` picks the adapter's shape — ``lora``, ``svd`` (TriLoRA's U·diag(σ)·Vᵀ)
or ``kronecker`` (DiffuseKronA's w1 ⊗ w2) — each reading its input through
frozen slot rows, so each is orthogonal across slots by construction
(``omg_core.model.forms`` has the argument for each).

The forward pass is ComfyUI's own (``omg_core.bridge.train_model``): hooks on the
real UNet modules of a ModelPatcher clone, the epsilon-prediction loss with
the model's own noise schedule. The inputs are prepared in
``omg_core.bridge.train_inputs``.

All randomness of step k is drawn from a generator seeded from (seed, k), so
(seed, step) is the whole random state: a run resumed from a checkpoint file
(every trained part of every layer, embeddings, optimizer state, step,
loss history) continues exactly as the uninterrupted run would have.

ComfyUI is imported lazily inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass

import torch

from omg_core.bridge.train_inputs import TextConditioning, augment_pool, check_images, encode_latents
from omg_core.bridge.train_model import (
    DOWN_MODES,
    FORMS,
    TARGETS,
    check_layout,
    compute_dtype,
    diffusion_loss,
    hooked,
    make_adapters,
    make_text_encoder_differentiable,
    make_trainable,
    release,
    stream_seed,
    target_layers,
    training_family,
)
from omg_core.model.concept import Concept, TokenEmbedding

log = logging.getLogger(__name__)

_CHECKPOINT_VERSION = 1
_FORBIDDEN_TRIGGER_CHARS = set("()[]{}:\\,")
MAX_EMBEDDING_VECTORS = 8


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how; everything that changes the result is here (it
    is hashed into the checkpoint fingerprint)."""

    trigger: str
    class_word: str
    steps: int = 400
    learning_rate: float = 1e-4
    rank: int = 4
    basis_seed: int = 0
    slot: int = 0
    seed: int = 0
    target: str = "kv"  # "kv": attn2 to_k/to_v; "attention": q/k/v/out of attn1 and attn2
    down: str = "basis"  # "basis": frozen shared-basis rows; "free": trainable random rows
    learn_embedding: bool = False
    embedding_lr: float | None = None  # None: learning_rate
    embedding_vectors: int = 1  # vectors of the learned trigger token (textual inversion's "vectors per token")
    batch_size: int = 1
    prior_weight: float = 1.0
    flip: bool = True
    crop: float = 0.1  # largest fraction of the side cut away by the random crop
    augment_variants: int = 3  # augmented copies per image, encoded once
    prompt: str = "a photo of {trigger} {class}"
    class_prompt: str = "a photo of {class}"
    name: str | None = None
    form: str = "lora"  # "lora": up @ basis rows; "svd": U·diag(σ)·basis rows; "kronecker": w1 ⊗ (U_B·basis rows)

    def validate(self) -> None:
        t = self.trigger.strip()
        if not t or any(c.isspace() for c in t) or _FORBIDDEN_TRIGGER_CHARS & set(t):
            raise ValueError(
                f"trigger word {self.trigger!r} must be one word without spaces, brackets, commas or colons "
                "(for example 'omgcat')"
            )
        if not self.class_word.strip():
            raise ValueError("class word is empty: give the kind of thing the concept is (for example 'cat')")
        if "{trigger}" not in self.prompt:
            raise ValueError(f"training prompt {self.prompt!r} must contain '{{trigger}}'")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1 (got {self.steps})")
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be positive (got {self.learning_rate})")
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1 (got {self.rank})")
        if self.target not in TARGETS:
            raise ValueError(f"target {self.target!r} is unknown; use one of {TARGETS}")
        if self.down not in DOWN_MODES:
            raise ValueError(f"down-projection mode {self.down!r} is unknown; use one of {DOWN_MODES}")
        check_form(self.form, self.target, self.down)
        if self.embedding_lr is not None and not self.embedding_lr > 0:
            raise ValueError(
                f"embedding learning rate must be positive (got {self.embedding_lr}); None uses learning_rate"
            )
        check_embedding_vectors(self.embedding_vectors, self.learn_embedding)
        if self.prior_weight < 0:
            raise ValueError(
                f"prior_weight must be 0 or more (got {self.prior_weight}); 1.0 weighs class images equally"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1 (got {self.batch_size})")
        if not 0.0 <= self.crop < 1.0:
            raise ValueError(f"crop must be in [0, 1) (got {self.crop}); 0.1 cuts at most 10% of a side")
        if self.augment_variants < 0:
            raise ValueError(f"augment_variants must be 0 or more (got {self.augment_variants})")

    def instance_prompt(self) -> str:
        return self.prompt.replace("{trigger}", self.trigger.strip()).replace("{class}", self.class_word.strip())

    def prior_prompt(self) -> str:
        return self.class_prompt.replace("{class}", self.class_word.strip())


def check_embedding_vectors(count: int, learn_embedding: bool) -> None:
    """The vectors are the learned trigger embedding's: without one there is nothing to give them to."""
    if not 1 <= count <= MAX_EMBEDDING_VECTORS:
        raise ValueError(
            f"embedding_vectors must be 1 to {MAX_EMBEDDING_VECTORS} (got {count}); "
            "each vector takes one of the prompt's 75 token places"
        )
    if count > 1 and not learn_embedding:
        raise ValueError(
            f"embedding_vectors is {count} but learn_embedding is off: the vectors are "
            "the learned trigger embedding; turn learn_embedding on, or set embedding_vectors to 1"
        )


def check_form(form: str, target: str, down: str = "basis") -> None:
    """The svd and kronecker forms exist to stay orthogonal by construction,
    which holds only on the k/v layers and on frozen basis rows."""
    if form not in FORMS:
        raise ValueError(f"adapter form {form!r} is unknown; use one of {FORMS}")
    if form != "lora" and target != "kv":
        raise ValueError(
            f"the {form} form trains the cross-attention k/v layers only (the layers concepts are combined "
            "on); set target to cross-attn k/v, or use form 'lora' to adapt every attention projection"
        )
    if form != "lora" and down != "basis":
        raise ValueError(
            f"the {form} form always reads a slot of the shared basis (that is what keeps concepts "
            "orthogonal); set down to 'basis', or use form 'lora' for a free down-projection"
        )


@dataclass
class TrainResult:
    concept: Concept
    losses: list[float]
    probe_loss_start: float  # loss on a fixed (timestep, noise) probe before training
    probe_loss_end: float  # ... and after
    resumed_from: int = 0  # the step a checkpoint let this run start from
    seconds: float = 0.0

    def loss_curve(self) -> torch.Tensor:
        from omg_core.render.loss_curve import loss_curve_image

        return loss_curve_image(self.losses)


# ---------------------------------------------------------------- checkpoints
def fingerprint(config: TrainConfig, images: torch.Tensor, prior: torch.Tensor | None, keys) -> str:
    """What a checkpoint must match to be resumed: settings, images, layers.

    The step count is left out (the first k steps do not depend on it), so an
    interrupted run may be finished with a different number of steps."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("steps", "name")}
    for key, old in (("form", "lora"), ("embedding_vectors", 1)):  # fields added later: older states still resume
        if settings[key] == old:
            del settings[key]
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for t in (images, prior):
        if t is not None:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(sorted(keys)).encode())
    return h.hexdigest()


def _parts_by_name(adapters) -> dict[str, dict[str, torch.Tensor]]:
    """Trained tensors as {part name: {layer: tensor}}, the checkpoint's layout
    (a LoRA's parts are "up" and, when free, "down")."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, adapter in adapters.items():
        for name, t in adapter.parts().items():
            out.setdefault(name, {})[key] = t
    return out


def _save_state(path, fp: str, step: int, adapters, vectors, optimizer, losses) -> None:
    parts = {name: {k: t.detach().cpu() for k, t in ts.items()} for name, ts in _parts_by_name(adapters).items()}
    state = {
        "version": _CHECKPOINT_VERSION,
        "fingerprint": fp,
        "step": step,
        **parts,
        "vectors": {k: v.detach().cpu() for k, v in vectors.items()},
        "optimizer": optimizer.state_dict(),
        "losses": list(losses),
        "rng": "per-step generators seeded from (seed, step)",
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path, fp: str, steps: int) -> dict | None:
    if path is None or not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != _CHECKPOINT_VERSION or state.get("fingerprint") != fp or state["step"] > steps:
        log.warning("ignoring training state %s: it belongs to a different run (settings or images changed)", path)
        return None
    return state


def _restore(state: dict, adapters, vectors, optimizer) -> tuple[int, list[float]]:
    with torch.no_grad():
        for name, tensors in _parts_by_name(adapters).items():
            for k, t in tensors.items():
                if k in state.get(name, {}):
                    t.copy_(state[name][k])
        for k, v in vectors.items():
            v.copy_(state["vectors"][k])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), [float(x) for x in state["losses"]]


# ---------------------------------------------------------------- training
def train_concept(
    model,
    clip,
    vae,
    images: torch.Tensor,
    config: TrainConfig,
    prior_images: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    snapshots: Collection[int] = (),
    on_snapshot: Callable[[int, Concept], None] | None = None,
) -> TrainResult:
    """Train a concept on a ComfyUI MODEL (+ CLIP for the prompts, VAE for the images).

    ``images`` [B, H, W, C] in 0..1 show the concept; ``prior_images`` (class
    images, optional) are trained with the class prompt to keep the class
    itself intact. ``progress(done, total)`` is called after every step and
    may raise to interrupt: the state is then written to ``checkpoint_path``
    (also every ``checkpoint_every`` steps), and calling again with the same
    arguments resumes from it. The file is removed when training completes.

    ``on_snapshot(step, concept)`` receives the concept as it stands after each step in
    ``snapshots``: one run to the longest count yields every shorter one, so the count can be
    chosen afterwards by how the concept reads (``omg_core.toyworld.concepts`` does so). A
    resumed run hands over only the snapshots after the step it resumes from.
    """
    config.validate()
    check_snapshots(snapshots, config.steps)
    images = check_images(images)
    if prior_images is not None:
        prior_images = check_images(prior_images, "prior-preservation IMAGE batch")
    family = training_family(model).name
    with torch.inference_mode(False), torch.enable_grad():
        return _train(
            model,
            clip,
            vae,
            images,
            config,
            prior_images,
            progress,
            checkpoint_path,
            checkpoint_every,
            family,
            frozenset(snapshots) if on_snapshot is not None else frozenset(),
            on_snapshot,
        )


def trainable_clone(model):
    """A clone to train on. From ComfyUI 0.12, NVIDIA GPUs sample with
    ``ModelPatcherDynamic``, which streams weights in as layers run; training
    needs them resident and differentiable, so a dynamic patcher gives a plain
    delegate (as ComfyUI's own trainer does with ``force_deepcopy``). Elsewhere
    (CPU, older hosts) a plain clone is what there is."""
    is_dynamic = getattr(model, "is_dynamic", None)
    if callable(is_dynamic) and is_dynamic():
        return model.clone(disable_dynamic=True)
    return model.clone()


def check_snapshots(snapshots: Collection[int], steps: int) -> None:
    bad = sorted(k for k in snapshots if not 1 <= k < steps)
    if bad:
        raise ValueError(f"snapshot steps {bad} are outside 1..{steps - 1}: a snapshot is taken before the last step")


def _train(
    model,
    clip,
    vae,
    images,
    config,
    prior_images,
    progress,
    checkpoint_path,
    checkpoint_every,
    family,
    snapshots,
    on_snapshot,
):
    import comfy.model_management as mm

    started = time.perf_counter()
    clone = trainable_clone(model)
    make_trainable(clone)
    inner = clone.model
    layers = target_layers(inner.diffusion_model, config.target)
    check_layout(layers, config.rank, config.slot, config.down, config.form)
    fp = fingerprint(config, images, prior_images, layers.keys())

    def latents_of(pixels, tag):
        pool = augment_pool(pixels, config.augment_variants, config.flip, config.crop, config.seed, tag)
        return encode_latents(vae, inner, pool)

    latents = latents_of(images, -2)
    prior_latents = latents_of(prior_images, -3) if prior_images is not None else None

    text_clip = clip
    if config.learn_embedding:  # gradients flow through the text encoder to the trigger vector
        text_clip = clip.clone()
        make_trainable(text_clip.patcher)
        make_text_encoder_differentiable(text_clip.patcher)
    dtype = compute_dtype(clone)
    if dtype != (inner.manual_cast_dtype or inner.get_dtype()):
        clone.set_model_compute_dtype(dtype)

    def load_unet():
        mm.load_models_gpu([clone], force_full_load=True)

    try:
        load_unet()
        device = clone.load_device
        latents = latents.to(device)
        prior_latents = prior_latents.to(device) if prior_latents is not None else None
        text = TextConditioning(
            text_clip,
            inner,
            config.instance_prompt(),
            config.prior_prompt(),
            config.trigger.strip(),
            config.class_word.strip(),
            config.learn_embedding,
            width=images.shape[2],
            height=images.shape[1],
            device=device,
            embedding_vectors=config.embedding_vectors,
        )
        adapters = make_adapters(
            layers, config.rank, config.down, config.basis_seed, config.slot, config.seed, device, config.form
        )
        # One group per part name (a LoRA's: its ups, then its free downs), each over every layer.
        groups = [
            {"params": list(tensors.values()), "lr": config.learning_rate}
            for tensors in _parts_by_name(adapters).values()
        ]
        if text.vectors:
            groups.append({"params": list(text.vectors.values()), "lr": config.embedding_lr or config.learning_rate})
        optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        trainable = [p for g in groups for p in g["params"]]

        state = _load_state(checkpoint_path, fp, config.steps)
        start, losses = _restore(state, adapters, text.vectors, optimizer) if state else (0, [])
        probe_idx = torch.arange(min(images.shape[0], 4))
        probe_t = torch.linspace(0.1, 0.9, len(probe_idx)).mul(len(inner.model_sampling.sigmas) - 1).long()

        def probe() -> float:
            """Loss on fixed timesteps and noise: comparable before and after."""
            with torch.no_grad():
                conds = text.instance()
                load_unet()
                with hooked(layers, adapters):
                    gen = torch.Generator().manual_seed(stream_seed(config.seed, -4))
                    return float(diffusion_loss(inner, latents[probe_idx], conds, gen, probe_t))

        probe_start = probe()
        done = start
        try:
            for step in range(start, config.steps):
                gen = torch.Generator().manual_seed(stream_seed(config.seed, step))
                conds = text.instance()
                if text_clip is not clip:  # encoding loaded the text encoder; keep the UNet loaded
                    load_unet()
                with hooked(layers, adapters):
                    idx = torch.randint(0, latents.shape[0], (config.batch_size,), generator=gen)
                    loss = diffusion_loss(inner, latents[idx], conds, gen)
                    if prior_latents is not None:
                        pidx = torch.randint(0, prior_latents.shape[0], (config.batch_size,), generator=gen)
                        loss = loss + config.prior_weight * diffusion_loss(inner, prior_latents[pidx], text.prior, gen)
                    # only the adapter gradients: never touch .grad of the shared model's weights
                    grads = torch.autograd.grad(loss, trainable)
                for p, g in zip(trainable, grads):
                    p.grad = g
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                done = step + 1
                if done in snapshots:
                    on_snapshot(done, _to_concept(adapters, text.vectors, config, family, losses))
                if checkpoint_path is not None and checkpoint_every > 0 and done % checkpoint_every == 0:
                    _save_state(checkpoint_path, fp, done, adapters, text.vectors, optimizer, losses)
                if progress is not None:
                    progress(done, config.steps)
        except BaseException:
            if checkpoint_path is not None and done > start:
                _save_state(checkpoint_path, fp, done, adapters, text.vectors, optimizer, losses)
            raise
        probe_end = probe()
    finally:
        release(clone)
        if text_clip is not clip:
            release(text_clip.patcher)

    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        os.remove(checkpoint_path)
    concept = _to_concept(adapters, text.vectors, config, family, losses)
    return TrainResult(
        concept=concept,
        losses=losses,
        probe_loss_start=probe_start,
        probe_loss_end=probe_end,
        resumed_from=start,
        seconds=time.perf_counter() - started,
    )


def _to_concept(adapters, vectors, config: TrainConfig, family: str, losses: list[float]) -> Concept:
    unet = {k: a.update() for k, a in adapters.items()}
    trigger = config.trigger.strip()
    embeddings = tuple(
        TokenEmbedding(token=trigger, encoder=enc, vectors=v.detach().float().cpu().clone())
        for enc, v in sorted(vectors.items())
    )
    metadata = {
        "omg_form": config.form,
        "omg_rank": str(config.rank),
        "omg_train_down": config.down,
        "omg_train_target": config.target,
        "omg_train_steps": str(len(losses)),
        "omg_train_learning_rate": repr(config.learning_rate),
        "omg_train_seed": str(config.seed),
        "omg_train_crop": repr(config.crop),
        "omg_train_embedding_vectors": str(config.embedding_vectors) if config.learn_embedding else "0",
        "omg_class_word": config.class_word.strip(),
        "omg_train_prompt": config.instance_prompt(),
        "omg_train_final_loss": f"{losses[-1]:.6f}" if losses else "",
    }
    if config.down == "basis":
        metadata.update(omg_basis_seed=str(config.basis_seed), omg_basis_slot=str(config.slot))
    return Concept(
        name=config.name or trigger,
        triggers=(trigger,),
        family=family,
        source_format="trained",
        unet=unet,
        embeddings=embeddings,
        metadata=metadata,
    )


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse to replace an existing file unless asked to, and even then
    anything but an earlier trained concept: the loras folder holds files
    people cannot get back. (An interrupted run writes no file, only its
    state, so resuming needs no overwrite.)"""
    if not os.path.exists(path):
        return
    if not overwrite:
        raise ValueError(
            f"{os.path.basename(os.fspath(path))} already exists: choose another output filename, or turn "
            "overwrite on to replace a concept trained earlier"
        )
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception:  # not a safetensors file at all
        header = {}
    if header.get("omg_source_format") != "trained":
        raise ValueError(
            f"{os.path.basename(os.fspath(path))} already exists and is not a concept trained by this node; "
            "choose another output filename (existing LoRAs are never overwritten)"
        )


def save_concept(result: TrainResult | Concept, path: str | os.PathLike) -> None:
    """The trained concept (or a snapshot of it) as a native file (loads with LoraLoader and OMG Load Concept)."""
    from omg_core.formats.native import save_native

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_native(path, result.concept if isinstance(result, TrainResult) else result)


def train_to_file(
    model, clip, vae, images, config: TrainConfig, path: str | os.PathLike, overwrite: bool = False, **kwargs
) -> TrainResult:
    """``train_concept`` and save the result to ``path`` (checked before the
    training starts, so a bad name does not cost a training run, and again
    before writing: another run may have written it meanwhile)."""
    check_output_path(path, overwrite)
    result = train_concept(model, clip, vae, images, config, **kwargs)
    check_output_path(path, overwrite)
    save_concept(result, path)
    return result
