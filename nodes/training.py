"""Nodes: training — train a concept on the shared orthogonal basis inside ComfyUI."""

from __future__ import annotations

import os

from comfy_api.latest import io, ui

from omg_core.model.forms import FORMS
from omg_core.ops.pruning import prune_concepts
from omg_core.pipelines.fuse import concept_list
from omg_core.pipelines.train import (
    MAX_EMBEDDING_VECTORS,
    TrainConfig,
    check_embedding_vectors,
    check_form,
    check_output_path,
    save_concept,
    train_to_file,
)

from .types import Concepts
from .validation import checked, numbers_in_range

TARGET_CHOICES = {"cross-attn k/v": "kv", "all attention": "attention"}
_FORM_TOOLTIP = (
    "The adapter's shape; every form is k/v-only and reads its slot of the shared basis, so concepts in "
    "different slots stay orthogonal. lora: up x slot rows (rank r). svd (TriLoRA): U x diag(sigma) x slot "
    "rows with U orthonormal, so OMG Prune Concept Rank can drop small sigma later; saved as a plain LoRA. "
    "kronecker (DiffuseKronA): w1 (8x8) kron (U x slot rows of the context/8-wide factor), rank 8r from "
    "about a seventh of lora's parameters; saved as a LyCORIS LoKr. kronecker slots are their own (24 at "
    "rank 4 on SD1.5, 64 on SDXL) and orthogonal to other kronecker concepts only. Needs target cross-attn k/v."
)


def _lora_path(filename: str) -> tuple[str, str]:
    """(absolute path in ComfyUI's first loras folder, name relative to it)."""
    import folder_paths

    name = filename.strip().replace("\\", "/")
    if not name.endswith(".safetensors"):
        name += ".safetensors"
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or any(p == "" for p in parts[:-1]) or parts[-1] == ".safetensors":
        raise ValueError(
            f"output filename {filename!r} must be a file name inside the loras folder "
            "(for example 'omg-cat.safetensors' or 'omg/cat.safetensors'), without '..' or a leading '/'"
        )
    root = folder_paths.get_folder_paths("loras")[0]
    return os.path.join(root, *parts), name


def _snapshot_paths(name: str, steps: int, save_every: int) -> dict[int, tuple[str, str]]:
    """Step -> (absolute path, name in loras) of the files ``save_every`` adds beside ``name``."""
    if not save_every:
        return {}
    stem = name.removesuffix(".safetensors")
    return {k: _lora_path(f"{stem}-{k}steps") for k in range(save_every, steps, save_every)}


def _check_snapshot_paths(name: str, snapshots: dict[int, tuple[str, str]], overwrite: bool) -> None:
    """Every snapshot name (``_snapshot_paths``) is checked as the output is; an interrupted run of
    this output may replace the snapshots it wrote itself, since queueing again continues it."""
    resuming = os.path.exists(_state_path(name, create_folder=False))
    for path, _ in snapshots.values():
        check_output_path(path, overwrite or resuming)


def _state_path(name: str, create_folder: bool = True) -> str:
    """Where an interrupted run of this output keeps its state (not in loras/,
    whose file list would show it)."""
    import folder_paths

    folder = os.path.join(folder_paths.get_output_directory(), "omg-training-state")
    if create_folder:
        os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name.replace("/", "__") + ".state")


class OMGTrainConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGTrainConcept",
            display_name="OMG Train Concept",
            category="OMG/training",
            description=(
                "Trains a concept as a LoRA on the UNet cross-attention k/v layers whose down-projections are a "
                "slot of the shared orthogonal basis, so concepts trained in different slots can be added together "
                "(form: also as TriLoRA's U·diag(σ)·Vᵀ or DiffuseKronA's Kronecker product, orthogonal the same way). "
                "Saves it into the loras folder (loads with OMG Load Concept and with LoraLoader). Interrupting "
                "keeps the progress: queue again with the same settings to continue."
            ),
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5 or SDXL model to train on (it is not changed)."),
                io.Clip.Input("clip", tooltip="The model's text encoder, for the training prompts."),
                io.Vae.Input("vae", tooltip="The model's VAE, to encode the training images."),
                io.Image.Input("images", tooltip="Images of the concept (a batch; 3 to 20 is typical)."),
                io.String.Input(
                    "trigger", default="omgcat", tooltip="The new word that will call up the concept in prompts."
                ),
                io.String.Input(
                    "class_word", default="cat", tooltip="What kind of thing the concept is ('cat', 'person', 'mug')."
                ),
                io.Int.Input(
                    "steps",
                    default=400,
                    min=1,
                    max=100000,
                    tooltip="Optimizer steps (one image each). Give 'all attention' about twice the steps of "
                    "'cross-attn k/v': it learns shapes, not only what the prompt tells the image (the toy "
                    "concepts: 400 for k/v; all attention trained 800 and kept at 600 or 800, whichever held "
                    "more box shapes alone; save_every gives you the shorter counts from one run).",
                ),
                io.Float.Input(
                    "learning_rate",
                    default=1e-4,
                    min=1e-7,
                    max=1.0,
                    step=1e-5,
                    round=1e-7,
                    tooltip="AdamW learning rate of the trained factors (and of the trigger embedding).",
                ),
                io.Int.Input(
                    "rank",
                    default=4,
                    min=1,
                    max=128,
                    tooltip="Rank per layer: basis rows per slot (kronecker form: of its slot factor; its update "
                    "then has rank 8 x this).",
                ),
                io.Int.Input(
                    "basis_seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    tooltip="Seed of the shared orthogonal basis: use the same one for every concept you will combine.",
                ),
                io.Int.Input(
                    "slot",
                    default=0,
                    min=0,
                    max=4096,
                    tooltip="Which block of basis rows this concept reads from: give every concept its own slot. "
                    "Up to (768 // rank) slots on SD1.5 k/v layers (kronecker form: 96 // rank; SDXL 2048 // rank "
                    "and 256 // rank).",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=2**63 - 1, tooltip="Seed of the noise, timesteps and augmentations."
                ),
                io.Combo.Input(
                    "target",
                    options=list(TARGET_CHOICES),
                    default="cross-attn k/v",
                    tooltip="Which layers to adapt: cross-attention k/v only (fuses with other concepts), or every "
                    "attention projection (4x the parameters): also learns a part the base model does not draw, "
                    "for routed regions, which give each region all of its concept; fused, its self-attention "
                    "changes act on the whole image.",
                ),
                io.Boolean.Input(
                    "learn_embedding",
                    default=False,
                    tooltip="Also learn a new embedding for the trigger word, initialised from the class word.",
                ),
                io.String.Input(
                    "filename",
                    default="omg-concept.safetensors",
                    tooltip="File name in the loras folder. A name that exists is refused unless overwrite is on.",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    optional=True,
                    tooltip="Replace the file of that name if it holds a concept trained by this node (any other "
                    "file is never replaced). Off: an existing name is refused when you queue.",
                ),
                io.Image.Input(
                    "prior_images",
                    optional=True,
                    tooltip="Optional class images (any cat, for 'cat'), trained with the plain class prompt so the "
                    "model keeps its idea of the class.",
                ),
                io.Combo.Input("form", options=list(FORMS), default="lora", optional=True, tooltip=_FORM_TOOLTIP),
                io.Float.Input(
                    "crop",
                    default=TrainConfig.crop,
                    min=0.0,
                    max=0.9,
                    step=0.05,
                    optional=True,
                    tooltip="Scale and position augmentation: each augmented copy of an image is a random square "
                    "cut, up to this share of the side smaller, enlarged back to full size, so the concept is seen "
                    "larger and at other places than in the photos. A cut can leave out part of the subject, and the "
                    "concept then learns it without that part: keep it small (the default) unless the subject sits "
                    "well inside every photo; 0: no cropping.",
                ),
                io.Int.Input(
                    "embedding_vectors",
                    default=TrainConfig.embedding_vectors,
                    min=1,
                    max=MAX_EMBEDDING_VECTORS,
                    optional=True,
                    tooltip="With learn_embedding on: how many vectors the trigger word's embedding has (textual "
                    "inversion's vectors per token). More than one gives an object of several parts or colours room "
                    "in the text; each takes one of the prompt's 75 token places.",
                ),
                io.Int.Input(
                    "save_every",
                    default=0,
                    min=0,
                    max=100000,
                    optional=True,
                    tooltip="Also save the concept every this many steps, beside the file as NAME-<step>steps, to "
                    "compare step counts from one run. Longer training learns small parts better and narrows the "
                    "sizes a concept is drawn at (if it leaves small boxes empty, an earlier file may serve "
                    "better). 0: only the final file. The names are checked like the file name.",
                ),
            ],
            outputs=[
                io.String.Output(display_name="filename", tooltip="The saved file, relative to the loras folder."),
                io.Image.Output(display_name="loss_curve", tooltip="Training loss per step."),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        learning_rate=None,
        filename=None,
        overwrite=False,
        form=None,
        target=None,
        crop=None,
        embedding_vectors=None,
        learn_embedding=None,
        steps=None,
        save_every=None,
    ) -> bool | str:
        numbers = numbers_in_range(
            cls, learning_rate=learning_rate, crop=crop, embedding_vectors=embedding_vectors, save_every=save_every
        )
        if numbers is not True:
            return numbers
        if embedding_vectors is not None and learn_embedding is not None:
            vectors = checked(check_embedding_vectors, embedding_vectors, learn_embedding)
            if vectors is not True:
                return vectors
        if target is not None and TARGET_CHOICES.get(target, target) not in TARGET_CHOICES.values():
            return f"target {target!r} is unknown; use one of {', '.join(TARGET_CHOICES)}"
        if form is not None:
            shape = checked(check_form, form, TARGET_CHOICES.get(target, target or "kv"))
            if shape is not True:
                return shape
        if filename is None:
            return True
        output = checked(lambda: check_output_path(_lora_path(filename)[0], bool(overwrite)))
        if output is not True or not save_every or steps is None:
            return output
        name = _lora_path(filename)[1]
        return checked(lambda: _check_snapshot_paths(name, _snapshot_paths(name, steps, save_every), bool(overwrite)))

    @classmethod
    def execute(
        cls,
        model,
        clip,
        vae,
        images,
        trigger: str,
        class_word: str,
        steps: int,
        learning_rate: float,
        rank: int,
        basis_seed: int,
        slot: int,
        seed: int,
        target: str,
        learn_embedding: bool,
        filename: str,
        overwrite: bool = False,
        prior_images=None,
        form: str = "lora",
        crop: float = TrainConfig.crop,
        embedding_vectors: int = TrainConfig.embedding_vectors,
        save_every: int = 0,
    ) -> io.NodeOutput:
        import comfy.model_management
        import comfy.utils

        path, name = _lora_path(filename)
        snapshots = _snapshot_paths(name, steps, save_every)
        _check_snapshot_paths(name, snapshots, overwrite)
        config = TrainConfig(
            trigger=trigger,
            class_word=class_word,
            steps=steps,
            learning_rate=learning_rate,
            rank=rank,
            basis_seed=basis_seed,
            slot=slot,
            seed=seed,
            target=TARGET_CHOICES.get(target, target),
            learn_embedding=learn_embedding,
            name=os.path.splitext(os.path.basename(name))[0],
            form=form,
            crop=crop,
            embedding_vectors=embedding_vectors,
        )
        bar = comfy.utils.ProgressBar(steps)

        def progress(done: int, total: int) -> None:
            bar.update_absolute(done, total)
            comfy.model_management.throw_exception_if_processing_interrupted()

        result = train_to_file(
            model,
            clip,
            vae,
            images,
            config,
            path,
            overwrite=overwrite,
            prior_images=prior_images,
            progress=progress,
            checkpoint_path=_state_path(name),
            checkpoint_every=100,
            snapshots=tuple(snapshots),
            on_snapshot=lambda step, concept: save_concept(concept, snapshots[step][0]),
        )
        curve = result.loss_curve()
        return io.NodeOutput(name, curve, ui=ui.PreviewImage(curve, cls=cls))


class OMGPruneConceptRank(io.ComfyNode):
    """A node of its own rather than an input of OMG Save Fused LoRA: pruning
    acts per concept, before anything combines them, so its result feeds every
    consumer (fusion, routed regions, the orthogonality report, Save Fused LoRA)
    and one concept's large singular values never decide what another keeps, as
    a threshold on a fused layer would."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGPruneConceptRank",
            display_name="OMG Prune Concept Rank",
            category="OMG/training",
            description=(
                "Drops each low-rank layer's singular values below a share of its largest, and reports how much of "
                "each concept's update is kept (relative Frobenius norm, per layer and overall). Concepts trained in "
                "the svd form keep their basis rows exactly; other LoRAs are decomposed exactly first. The input "
                "subspace only shrinks, so orthogonal concepts stay orthogonal. Kronecker and dense layers pass "
                "through unchanged."
            ),
            inputs=[
                Concepts.Input("concepts", tooltip="Concepts from OMG Load Concept."),
                io.Float.Input(
                    "threshold",
                    default=0.05,
                    min=0.0,
                    max=1.0,
                    step=0.005,
                    tooltip="Share of each layer's largest singular value under which a singular value is dropped "
                    "(0 keeps everything, 1 keeps rank 1).",
                ),
            ],
            outputs=[
                Concepts.Output(
                    display_name="concepts", tooltip="The pruned concepts (strength, triggers and embeddings kept)."
                ),
                io.String.Output(display_name="report", tooltip="Rank before and after, and ‖ΔW‖ kept, per layer."),
            ],
        )

    @classmethod
    def validate_inputs(cls, threshold=None) -> bool | str:
        return numbers_in_range(cls, threshold=threshold)

    @classmethod
    def execute(cls, concepts, threshold: float) -> io.NodeOutput:
        result = prune_concepts(concept_list(concepts), threshold)
        text = result.table()
        return io.NodeOutput(result.concepts, text, ui={"text": [text]})


NODES: list = [OMGTrainConcept, OMGPruneConceptRank]
