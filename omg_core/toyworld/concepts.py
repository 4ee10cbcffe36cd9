"""The toy world's personal concepts: trained with the pack's trainer, written in every format.

Each personal object (``scenes.PERSONAL_OBJECTS``) is trained from ten seeded
photos with ``omg_core.pipelines.train.train_concept`` in each of ``KINDS``,
with the same settings otherwise:

* *orthogonal*: k/v-only LoRA whose down-projections are rows of the shared
  basis, concept i in slot i — what the pack's fusion is for;
* *attention*: the same on every attention projection (self-attention and
  cross-attention q/k/v/out) — for routed regions, which give each box its own
  concept's projections. A k/v update only changes what the text tells the
  image, so it can recombine parts the base model draws but not teach it a new
  shape; the kite's and the berry's downward triangles need the rest
  (``assets/toyworld/bench/trainer/attention``). Fused, their self-attention
  changes act on the whole image, so the fusion methods keep the k/v ones;
* *plain*: free (trained) down-projections, k/v — an ordinary LoRA, the
  baseline that naive stacking and area conditioning use.

Both learn the trigger word's embedding too (Mix-of-Show's ED-LoRA recipe):
a k/v update alone reads the trigger only through a fixed random text
feature, and in this small world that drew one-colour blobs where a
two-colour object was asked for; with the embedding the concepts come out
whole.

The orthogonal (k/v) concepts are also written in each external format the pack
reads, exactly (every format below holds a k/v low-rank update and one token
vector without loss): kohya/sd-scripts LoRA and LyCORIS LoKr (with a 1×1
first Kronecker factor, kron([[1]], B·A) = B·A) with the token as a bundled
embedding, diffusers/PEFT LoRA (bundled embedding as well), Mix-of-Show
ED-LoRA (token ``<name1>``, the vector repeated for every layer) and Custom
Diffusion ``delta.ckpt`` (its compressed form: the change as ``{'u', 'v'}``
factors; token ``<new1>``).

ComfyUI is imported lazily inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from omg_core.model.concept import Concept, LowRankUpdate
from omg_core.toyworld import scenes as S
from omg_core.toyworld.checkpoint import ASSET_DIR

CONCEPT_DIR = ASSET_DIR / "concepts"
BASIS_SEED = 11
CLASS_WORDS = {"target": "circle", "house": "square", "kite": "triangle", "berry": "circle"}

# Our SD1.5 layout (one resolution level) in diffusers' module names.
DIFFUSERS_BLOCKS = {
    "input_blocks.1.1": "down_blocks.0.attentions.0",
    "middle_block.1": "mid_block.attentions.0",
    "output_blocks.0.1": "up_blocks.0.attentions.0",
    "output_blocks.1.1": "up_blocks.0.attentions.1",
}
EXTERNAL_FORMATS = {  # format -> concept written in it
    "kohya": "target",
    "peft": "house",
    "edlora": "kite",
    "custom_diffusion": "berry",
    "lokr": "target",
}


@dataclass(frozen=True)
class ConceptTrainSettings:
    """The toy concepts' recipe. ``benchmarks.trainer_fidelity`` found crop 0.4 with learning
    rate 1e-2 lifting the kite and the berry alone in a box (21/32 → 28/32), but concepts retrained
    so did not compose better (the house lost what the kite gained, fused prior drift rose;
    ``assets/toyworld/bench/trainer/recipe``), so the shipped concepts keep this recipe."""

    steps: int = 400
    learning_rate: float = 5e-3
    rank: int = 4
    batch_size: int = 4
    images: int = 10
    seed: int = 0
    learn_embedding: bool = True
    size: int = S.IMAGE_SIZE  # the training photos' side in pixels
    crop: float = 0.1  # scale/position augmentation (TrainConfig.crop)


@dataclass(frozen=True)
class ConceptKind:
    """How one kind of toy concept is trained (``TrainConfig.down``/``target``) and named on disk.

    ``steps_factor`` multiplies the recipe's steps; ``candidates`` are the shares of those steps at
    which the run also hands over the concept (``train_concept``'s snapshots), so that the count a
    concept keeps is chosen by how it reads rather than fixed for all (``train_personal_concepts``).
    An every-projection concept learns shapes, not only what the text tells the image, and the steps
    that suit one shape do not suit another: at 800 steps instead of 400 the four are read by prompt
    64/64 times (58/64) and the berry alone in six box shapes 36/48 (31/48), but the house and the
    kite leave small boxes empty (44/48, 45/48; at 600: 48/48, 47/48, the berry 27/48)
    (``assets/toyworld/bench/trainer/attention/long/``, ``assets/toyworld/bench/attention-800/``).
    Chosen so, on seeds of their own, the shipped house and kite keep 600 steps (48 against 45,
    46 against 46), the berry and the target 800 (39 against 31, 48 against 47; ``manifest.json``
    ``concepts.runs``)."""

    suffix: str
    down: str
    target: str
    steps_factor: int = 1
    candidates: tuple[float, ...] = ()

    def steps(self, settings: ConceptTrainSettings) -> int:
        return settings.steps * self.steps_factor

    def candidate_steps(self, settings: ConceptTrainSettings) -> tuple[int, ...]:
        """The step counts to choose among, the full run last (empty: the full run is kept)."""
        full = self.steps(settings)
        if not self.candidates:
            return ()
        return tuple(sorted({max(1, round(full * share)) for share in self.candidates if share < 1} | {full}))


KINDS = {
    "orthogonal": ConceptKind("", "basis", "kv"),
    "attention": ConceptKind("-attention", "basis", "attention", steps_factor=2, candidates=(0.75,)),
    "plain": ConceptKind("-plain", "free", "kv"),
}


def concept_file(name: str, kind: str = "orthogonal", directory: Path = CONCEPT_DIR) -> Path:
    return Path(directory) / f"toyworld-{name}{KINDS[kind].suffix}.safetensors"


def training_images(name: str, n: int = 10, seed: int = 0, size: int = S.IMAGE_SIZE) -> torch.Tensor:
    """The user's photos of a personal object as a ComfyUI IMAGE batch [n, size, size, 3]."""
    photos = S.personal_training_set(name, n, seed, size)
    return S.to_tensor([s.image for s in photos]).permute(0, 2, 3, 1).contiguous()


def train_config(name: str, slot: int, kind: str, settings: ConceptTrainSettings):
    from omg_core.pipelines.train import TrainConfig

    return TrainConfig(
        target=KINDS[kind].target,
        trigger=S.PERSONAL_OBJECTS[name],
        class_word=CLASS_WORDS[name],
        steps=KINDS[kind].steps(settings),
        learning_rate=settings.learning_rate,
        rank=settings.rank,
        basis_seed=BASIS_SEED,
        slot=slot,
        seed=settings.seed + slot,
        down=KINDS[kind].down,
        batch_size=settings.batch_size,
        learn_embedding=settings.learn_embedding,
        crop=settings.crop,
        prompt="a {trigger}",
        class_prompt="a {class}",
        name=name,
    )


Chooser = Callable[[str, str, dict[int, Path]], tuple[int, dict]]


def train_personal_concepts(
    model,
    clip,
    vae,
    directory: Path = CONCEPT_DIR,
    settings: ConceptTrainSettings = ConceptTrainSettings(),
    names: tuple[str, ...] = tuple(S.PERSONAL_OBJECTS),
    log: Callable[[str], None] | None = None,
    kinds: tuple[str, ...] = tuple(KINDS),
    choose: Chooser | None = None,
    candidate_dir: Path | None = None,
) -> dict[str, dict]:
    """Train every personal concept in each of ``kinds`` (the basis ones in slot i); write native files.

    ``names``/``kinds`` select a part, so that parts can train in separate processes; a
    concept keeps slot i of ``S.PERSONAL_OBJECTS`` whatever the selection. A kind with
    ``candidates`` trains once to its full steps, writes the concept at each candidate count to
    ``candidate_dir`` (default ``directory/candidates``), and ships the one ``choose(name, kind,
    {steps: file})`` returns with its readings (the script reads each alone in box shapes the
    benchmarks do not score: ``benchmarks.box_shapes.choose_steps``); without ``choose``, the
    full run."""
    from omg_core.formats.native import save_native
    from omg_core.pipelines.train import train_concept

    directory = Path(directory)
    candidate_dir = Path(candidate_dir) if candidate_dir is not None else directory / "candidates"
    directory.mkdir(parents=True, exist_ok=True)
    report = {}
    for slot, name in enumerate(S.PERSONAL_OBJECTS):
        if name not in names:
            continue
        images = None
        for kind in kinds:
            path = concept_file(name, kind, directory)
            stats = trained_stats(path)
            counts = KINDS[kind].candidate_steps(settings)
            if stats is None:  # not trained yet (an interrupted run resumes here)
                config = train_config(name, slot, kind, settings)
                files = {k: candidate_file(name, kind, k, candidate_dir) for k in counts}
                stats = trained_stats(files[config.steps]) if counts else None
                if stats is None:
                    if images is None:
                        images = training_images(name, settings.images, settings.seed, settings.size)
                    if counts:
                        candidate_dir.mkdir(parents=True, exist_ok=True)

                    def keep(step, concept, files=files, down=config.down):
                        save_native(files[step], concept, {"toyworld": "1", "down": down})

                    result = train_concept(
                        model, clip, vae, images, config, snapshots=counts[:-1], on_snapshot=keep if counts else None
                    )
                    stats = {
                        "seconds": round(result.seconds, 1),
                        "probe_loss_start": result.probe_loss_start,
                        "probe_loss_end": result.probe_loss_end,
                    }
                    meta = {"toyworld": "1", "down": config.down, "toyworld_train": stats}
                    save_native(files[config.steps] if counts else path, result.concept, meta)
                if counts:
                    stats = ship_candidate(name, kind, files, stats, path, choose)
            report[f"{name}/{kind}"] = stats
            if log is not None:
                chosen = f", {stats['steps']} of {stats['trained_steps']} steps kept" if "steps" in stats else ""
                log(f"{name} ({kind}): trained in {stats['seconds']:.0f} s{chosen}")
    return report


def candidate_file(name: str, kind: str, steps: int, directory: Path) -> Path:
    return Path(directory) / f"{concept_file(name, kind).stem}.{steps}-steps.safetensors"


def ship_candidate(name: str, kind: str, files: dict[int, Path], stats: dict, path: Path, choose) -> dict:
    """Write the chosen candidate as the concept's file, its training record saying which and why."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise ValueError(
            f"candidate files {missing} are missing (a run resumed past them); delete "
            f"{files[max(files)]} to train {name} ({kind}) again"
        )
    full = max(files)
    steps, reading = choose(name, kind, dict(files)) if choose is not None else (full, {})
    if steps not in files:
        raise ValueError(f"choose returned {steps} steps for {name} ({kind}); the candidates are {sorted(files)}")
    record = {"seconds": stats["seconds"], "steps": steps, "trained_steps": full, "reading": reading}
    with safe_open(str(files[steps]), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = dict(f.metadata() or {})
    save_file(tensors, str(path), metadata={**header, "toyworld_train": json.dumps(record)})
    return record


def trained_stats(path: Path) -> dict | None:
    """The training record a finished concept file carries in its header (None: train it)."""
    if not Path(path).exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        record = (f.metadata() or {}).get("toyworld_train")
    return json.loads(record) if record else None


def load_bench_concepts(
    model,
    clip,
    directory: Path = CONCEPT_DIR,
    basis_directory: Path | None = None,
    names: tuple[str, ...] = tuple(S.PERSONAL_OBJECTS),
) -> dict[str, list[Concept]]:
    """The concepts of each kind of the personal objects ``names``, bound to ``model`` by ``load_concept``.
    With ``basis_directory`` (a trainer variant's ``toyworld-NAME.safetensors``) its files stand
    for both basis kinds, so that every method reads the variant, against the shipped plain LoRAs."""
    from omg_core.bridge.binding import load_concept

    out: dict[str, list[Concept]] = {kind: [] for kind in KINDS}
    for name, trigger in S.PERSONAL_OBJECTS.items():
        if name not in names:
            continue
        loaded: dict[Path, Concept] = {}  # a variant's file stands for two kinds: loaded once
        for kind, concepts in out.items():
            path = concept_file(name, kind, directory)
            if basis_directory is not None and KINDS[kind].down == "basis":
                path = concept_file(name, "orthogonal", basis_directory)
            if path not in loaded:
                if not path.exists():
                    raise ValueError(
                        f"toy-world concept file {path} is missing; train it with `python scripts/train_toyworld.py --concepts`"
                    )
                loaded[path] = load_concept(str(path), model, clip, name=name, triggers=trigger)
            concepts.append(loaded[path])
    return out


# ------------------------------------------------------------------ external formats
def diffusers_module(key: str) -> str:
    """``diffusion_model.input_blocks.1.1.….attn2.to_k.weight`` -> ``down_blocks.0.attentions.0.….attn2.to_k``."""
    path = key.removeprefix("diffusion_model.").removesuffix(".weight")
    for sgm, diffusers in DIFFUSERS_BLOCKS.items():
        if path.startswith(sgm + "."):
            return diffusers + path[len(sgm) :]
    raise ValueError(f"layer {key} is outside the toy world's cross-attention blocks")


def _low_rank(concept: Concept) -> dict[str, LowRankUpdate]:
    out = {}
    for key, u in concept.unet.items():
        low = u.as_low_rank()
        if low is None:
            raise ValueError(
                f"concept '{concept.name}' layer {key} is not low-rank; only LoRA concepts can be exported"
            )
        out[key] = low
    return out


def token_vector(concept: Concept, clip=None) -> torch.Tensor:
    """The concept's trigger vector [768]: its learned embedding, or else (with
    ``clip``) the text encoder's input row of its single-token trigger word."""
    if concept.embeddings:
        vectors = concept.embeddings[0].vectors
        if vectors.ndim != 2 or vectors.shape[0] != 1:
            raise ValueError(f"concept '{concept.name}' has a {tuple(vectors.shape)} embedding; one vector is exported")
        return vectors[0].detach().float().cpu().clone()
    if clip is None:
        raise ValueError(f"concept '{concept.name}' has no learned embedding; pass the CLIP to export its trigger row")
    word = concept.triggers[0]
    ids = [t[0] for t in clip.tokenize(word)["l"][0] if t[0] not in (49406, 49407)]
    if len(ids) != 1:
        raise ValueError(f"trigger {word!r} is {len(ids)} tokens; a new-token format needs a single-token trigger")
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    return table[ids[0]].detach().float().cpu().clone()


def _bundle(token: str, vector: torch.Tensor) -> dict[str, torch.Tensor]:
    """sd-scripts' bundled-embedding keys (a textual inversion riding in a LoRA file)."""
    return {f"bundle_emb.{token}.string_to_param.*": vector[None].contiguous()}


def write_kohya(concept: Concept, path: Path, vector: torch.Tensor) -> Path:
    from safetensors.torch import save_file

    sd, rank = _bundle(concept.triggers[0], vector), 0
    for key, u in _low_rank(concept).items():
        name = "lora_unet_" + diffusers_module(key).replace(".", "_")
        sd[f"{name}.lora_down.weight"] = u.down_matrix().contiguous()
        sd[f"{name}.lora_up.weight"] = u.up_matrix().contiguous()
        sd[f"{name}.alpha"] = torch.tensor(float(u.rank * u.scale))
        rank = max(rank, u.rank)
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "modelspec.trigger_phrase": concept.triggers[0],
    }
    save_file(sd, str(path), metadata=meta)
    return path


def write_peft(concept: Concept, path: Path, vector: torch.Tensor) -> Path:
    from safetensors.torch import save_file

    sd, rank, scale = _bundle(concept.triggers[0], vector), None, None
    for key, u in _low_rank(concept).items():
        base = "unet." + diffusers_module(key)
        sd[f"{base}.lora_A.weight"] = u.down_matrix().contiguous()
        sd[f"{base}.lora_B.weight"] = u.up_matrix().contiguous()
        rank, scale = u.rank, u.scale
    config = {"unet.r": rank, "unet.lora_alpha": rank * scale}
    save_file(sd, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    return path


def write_edlora(concept: Concept, path: Path, vector: torch.Tensor, layers: int = 16) -> Path:
    unet = {}
    for key, u in _low_rank(concept).items():
        m = diffusers_module(key)
        unet[f"{m}.lora_down.weight"] = u.down_matrix().clone()
        unet[f"{m}.lora_up.weight"] = (u.scale * u.up_matrix()).clone()
    token = f"<{concept.name}1>"
    embedding = {token: vector[None].repeat(layers, 1)}
    torch.save({"params": {"new_concept_embedding": embedding, "text_encoder": {}, "unet": unet}}, str(path))
    return path


def write_custom_diffusion(concept: Concept, path: Path, vector: torch.Tensor) -> Path:
    """Custom Diffusion's ``delta.ckpt`` in its compressed form (``--compress`` in the
    original repository): per layer the change itself as ``{'u', 'v'}`` factors, plus
    the modifier token. The full-weight form would hold 8 MB of copied base weights."""
    state = {}
    for key, u in _low_rank(concept).items():
        state[f"model.{key}"] = {"u": (u.scale * u.up_matrix()).clone(), "v": u.down_matrix().clone()}
    state["embed"] = vector[None].clone()
    torch.save({"state_dict": state}, str(path))
    return path


def write_lokr(concept: Concept, path: Path, vector: torch.Tensor) -> Path:
    from safetensors.torch import save_file

    sd = _bundle(concept.triggers[0], vector)
    for key, u in _low_rank(concept).items():
        name = "lora_unet_" + diffusers_module(key).replace(".", "_")
        sd[f"{name}.lokr_w1"] = torch.ones(1, 1)
        sd[f"{name}.lokr_w2_a"] = u.up_matrix().contiguous()
        sd[f"{name}.lokr_w2_b"] = u.down_matrix().contiguous()
        sd[f"{name}.alpha"] = torch.tensor(float(u.rank * u.scale))
    save_file(sd, str(path), metadata={"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "lokr"}'})
    return path


WRITERS = {
    "kohya": write_kohya,
    "peft": write_peft,
    "edlora": write_edlora,
    "custom_diffusion": write_custom_diffusion,
    "lokr": write_lokr,
}


def external_file(fmt: str, directory: Path = CONCEPT_DIR) -> Path:
    name = EXTERNAL_FORMATS[fmt]
    suffix = {
        "kohya": "kohya.safetensors",
        "peft": "peft.safetensors",
        "edlora": "edlora.pth",
        "custom_diffusion": "delta.ckpt",
        "lokr": "lokr.safetensors",
    }[fmt]
    return Path(directory) / f"toyworld-{name}-{suffix}"


def external_trigger(fmt: str) -> str:
    """What a prompt must say to use the concept loaded from that format's file."""
    name = EXTERNAL_FORMATS[fmt]
    return {"edlora": f"<{name}1>", "custom_diffusion": "<new1>"}.get(fmt, S.PERSONAL_OBJECTS[name])


def write_external_formats(model, clip, directory: Path = CONCEPT_DIR) -> dict[str, Path]:
    """Every external format, from the orthogonal (k/v) concepts' native files: Custom Diffusion's
    holds cross-attention only, so the formats carry the kind every one of them can hold whole."""
    from omg_core.bridge.binding import load_concept

    directory = Path(directory)
    out = {}
    for fmt, name in EXTERNAL_FORMATS.items():
        concept = load_concept(
            str(concept_file(name, "orthogonal", directory)), model, clip, name=name, triggers=S.PERSONAL_OBJECTS[name]
        )
        out[fmt] = WRITERS[fmt](concept, external_file(fmt, directory), token_vector(concept, clip))
    return out


def install_models(models_dir: Path, checkpoint_name: str = "omg-toyworld-sd15.safetensors") -> dict[str, Path]:
    """Link the toy-world checkpoint into ``models_dir/checkpoints`` and every concept
    file into ``models_dir/loras`` (a ComfyUI models folder); idempotent."""
    from omg_core.toyworld.checkpoint import toyworld_checkpoint

    models_dir = Path(models_dir)
    links = {models_dir / "checkpoints" / checkpoint_name: toyworld_checkpoint()}
    for src in sorted(CONCEPT_DIR.glob("toyworld-*")):
        links[models_dir / "loras" / src.name] = src
    for dst, src in links.items():
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            if dst.resolve() == src.resolve():
                continue
            dst.unlink()
        dst.symlink_to(src.resolve())
    return {dst.name: dst for dst in links}
