"""Nodes: concepts — read one adapter file from the loras folder into a concept chain."""

import folder_paths
from comfy_api.latest import io

from omg_core.pipelines.load import add_concept

from .types import Concepts
from .validation import numbers_in_range


class OMGLoadConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGLoadConcept",
            display_name="OMG Load Concept",
            category="OMG/concepts",
            description=(
                "Reads one concept from ComfyUI's loras folder — kohya or diffusers/PEFT LoRA, LyCORIS LoKr, "
                "Mix-of-Show ED-LoRA, Custom Diffusion or an OMG native file; the format is detected from the file — "
                "checks it against the model and adds it to the concept list. Nothing is applied to the model here: "
                "connect the list to OMG Fuse Concepts."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The checkpoint's MODEL. The concept is checked against it (SD1.5 vs SDXL, layer names and "
                    "shapes) and bound to its layers; the model itself is not changed.",
                ),
                io.Clip.Input(
                    "clip",
                    tooltip="The checkpoint's CLIP, for concepts that change the text encoder or bring learned trigger "
                    "tokens. It is not changed here.",
                ),
                io.Combo.Input(
                    "lora_name",
                    options=folder_paths.get_filename_list("loras"),
                    tooltip="The concept file, from ComfyUI's models/loras folder. For diffusers' Custom Diffusion "
                    "output pick pytorch_custom_diffusion_weights.*; its <token> files beside it are read too.",
                ),
                io.String.Input(
                    "trigger",
                    default="",
                    optional=True,
                    tooltip="Optional trigger word(s), comma-separated, replacing the file's own. For files with "
                    "learned tokens (ED-LoRA, Custom Diffusion, native) give one word per token, in the file's "
                    "order; each word then carries that token's embedding in prompts. Mix-of-Show's layer-wise "
                    "tokens are encoded with the mean of their per-layer embeddings (an approximation) by plain "
                    "text encoders; OMG Apply Regional Attention encodes them exactly, one embedding per "
                    "cross-attention layer (SD1.5). Trigger "
                    "words must differ between concepts of one chain.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="How strongly this concept's weight updates apply (1 = as trained). Mix-of-Show "
                    "checkpoints store no alpha and are read at scale 1; its own scripts merge at 0.6-0.7.",
                ),
                Concepts.Input(
                    "concepts",
                    optional=True,
                    tooltip="Concepts loaded by earlier OMG Load Concept nodes; this concept is appended (the "
                    "incoming list is not modified).",
                ),
            ],
            outputs=[
                Concepts.Output(
                    display_name="concepts",
                    tooltip="The incoming concepts followed by this one, for OMG Fuse Concepts, the orthogonality "
                    "nodes or another OMG Load Concept.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, strength=None) -> bool | str:
        return numbers_in_range(cls, strength=strength)

    @classmethod
    def execute(cls, model, clip, lora_name, trigger="", strength=1.0, concepts=None) -> io.NodeOutput:
        # Names only: ComfyUI does not check V3 combo values against the list, so a path could arrive here.
        if lora_name not in folder_paths.get_filename_list("loras"):
            raise ValueError(
                f"{lora_name!r} is not a file in ComfyUI's loras folder: pick a concept from the list "
                "(put new files into models/loras and refresh)."
            )
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        return io.NodeOutput(add_concept(concepts, path, model, clip, triggers=trigger or None, strength=strength))


NODES: list = [OMGLoadConcept]
