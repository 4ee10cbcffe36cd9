"""Nodes: training — train a concept on the shared orthogonal basis inside ComfyUI."""

from __future__ import annotations

import os

from comfy_api.latest import io, ui

from omg_core.pipelines.train import TrainConfig, check_output_path, train_to_file

from .validation import checked, numbers_in_range

TARGET_CHOICES = {"cross-attn k/v": "kv", "all attention": "attention"}


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


def _state_path(name: str) -> str:
    """Where an interrupted run of this output keeps its state (not in loras/,
    whose file list would show it)."""
    import folder_paths

    folder = os.path.join(folder_paths.get_output_directory(), "omg-training-state")
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
                "slot of the shared orthogonal basis, so concepts trained in different slots can be added together. "
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
                io.Int.Input("steps", default=400, min=1, max=100000, tooltip="Optimizer steps (one image each)."),
                io.Float.Input(
                    "learning_rate",
                    default=1e-4,
                    min=1e-7,
                    max=1.0,
                    step=1e-5,
                    round=1e-7,
                    tooltip="AdamW learning rate of the up-projections (and of the trigger embedding).",
                ),
                io.Int.Input("rank", default=4, min=1, max=128, tooltip="LoRA rank per layer."),
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
                    "Up to (768 // rank) slots on SD1.5 k/v layers.",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=2**63 - 1, tooltip="Seed of the noise, timesteps and augmentations."
                ),
                io.Combo.Input(
                    "target",
                    options=list(TARGET_CHOICES),
                    default="cross-attn k/v",
                    tooltip="Which layers to adapt: cross-attention k/v only (combinable concepts), or every "
                    "attention projection (for comparison; 4x the parameters).",
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
            ],
            outputs=[
                io.String.Output(display_name="filename", tooltip="The saved file, relative to the loras folder."),
                io.Image.Output(display_name="loss_curve", tooltip="Training loss per step."),
            ],
        )

    @classmethod
    def validate_inputs(cls, learning_rate=None, filename=None, overwrite=False) -> bool | str:
        numbers = numbers_in_range(cls, learning_rate=learning_rate)
        if numbers is not True or filename is None:
            return numbers
        return checked(lambda: check_output_path(_lora_path(filename)[0], bool(overwrite)))

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
    ) -> io.NodeOutput:
        import comfy.model_management
        import comfy.utils

        path, name = _lora_path(filename)
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
        )
        curve = result.loss_curve()
        return io.NodeOutput(name, curve, ui=ui.PreviewImage(curve, cls=cls))


NODES: list = [OMGTrainConcept]
