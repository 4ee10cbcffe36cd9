"""Nodes: fusion — measure how concepts interfere, orthogonalize them, fuse them
into a model (as patches on clones) or into a standard LoRA file."""

from __future__ import annotations

import os

from comfy_api.latest import io

from omg_core.bridge.text_features import (
    DEFAULT_TEMPLATES,
    REGULARIZATION_PROMPTS,
    concept_text_features,
    parse_prompts,
    parse_templates,
)
from omg_core.formats.lora_export import export_lora
from omg_core.ops.fusion import FUSION_METHODS, FusionResult
from omg_core.ops.orthogonality import cross_talk_report, orthogonalize
from omg_core.pipelines.fuse import concept_list, fuse_concepts, fused_model
from omg_core.render.heatmaps import crosstalk_image

from .types import Concepts
from .validation import numbers_in_range

_METHOD_TOOLTIP = (
    "additive: exact sum of the concepts' updates (one concatenated low-rank patch per layer; best for "
    "orthogonal concepts). least_squares: Mix-of-Show gradient fusion in closed form — the layer that best "
    "reproduces every concept on its own prompts. constrained: Custom Diffusion closed form — every concept "
    "exactly on its own prompts, as close to the base model as possible on neutral prompts."
)
_REG_TOOLTIP = (
    "λ. least_squares: ridge weight relative to the mean feature energy (larger = closer to the base model, "
    "less faithful). constrained: weight of the plain weight-change norm next to the neutral prompts."
)
_TEMPLATE_TOOLTIP = (
    "Prompts whose CLIP features each concept is fitted/measured on, one per line; {trigger} is replaced by each "
    "trigger word of the concept. Empty = built-in set. Each prompt is one text-encoder pass."
)
_REG_PROMPTS_TOOLTIP = (
    "Neutral captions (one per line) that the constrained method keeps unchanged and on which drift is reported. "
    "Empty = constrained keeps the plain weight change small instead, and no drift is reported."
)


def _feature_prompts_input() -> io.String.Input:
    return io.String.Input(
        "feature_prompts",
        multiline=True,
        default="\n".join(DEFAULT_TEMPLATES),
        optional=True,
        tooltip=_TEMPLATE_TOOLTIP,
    )


def _reg_prompts_input() -> io.String.Input:
    return io.String.Input(
        "regularization_prompts",
        multiline=True,
        default="\n".join(REGULARIZATION_PROMPTS),
        optional=True,
        tooltip=_REG_PROMPTS_TOOLTIP,
    )


def _progress(total_hint: int = 1):
    import comfy.utils

    bar = comfy.utils.ProgressBar(total_hint)
    return lambda done, total: bar.update_absolute(done, total)


def run_fusion(
    concepts, method: str, regularization: float, clip, templates: str, reg_prompts: str | None = None
) -> FusionResult:
    prompts = REGULARIZATION_PROMPTS if reg_prompts is None else parse_prompts(reg_prompts)
    return fuse_concepts(
        concepts, method, regularization, clip, parse_templates(templates), prompts, progress=_progress
    )


class OMGFuseConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGFuseConcepts",
            display_name="OMG Fuse Concepts",
            category="OMG/fusion",
            description="Fuse several concepts into the model and CLIP as weight patches on clones "
            "(the inputs are never changed). Each concept's strength is set on its loader.",
            inputs=[
                io.Model.Input("model", tooltip="The base model; a patched clone is returned."),
                io.Clip.Input(
                    "clip",
                    tooltip="The base CLIP; a clone with the concepts' text-encoder updates and trigger "
                    "embeddings is returned. Also encodes the prompts the fit uses.",
                ),
                Concepts.Input("concepts", tooltip="Concepts from OMG Load Concept (or OMG Orthogonalize)."),
                io.Combo.Input("method", options=list(FUSION_METHODS), default="additive", tooltip=_METHOD_TOOLTIP),
                io.Float.Input("regularization", default=0.001, min=0.0, max=100.0, step=0.0001, tooltip=_REG_TOOLTIP),
                _feature_prompts_input(),
                _reg_prompts_input(),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="Clone of the model with the fused patches."),
                io.Clip.Output(
                    display_name="CLIP", tooltip="Clone of the CLIP with text-encoder patches and triggers."
                ),
                io.String.Output(display_name="report", tooltip="What was fitted where, and each concept's fidelity."),
            ],
        )

    @classmethod
    def validate_inputs(cls, regularization=None) -> bool | str:
        return numbers_in_range(cls, regularization=regularization)

    @classmethod
    def execute(
        cls, model, clip, concepts, method, regularization, feature_prompts="", regularization_prompts=None
    ) -> io.NodeOutput:
        result = run_fusion(concepts, method, regularization, clip, feature_prompts, regularization_prompts)
        new_model, new_clip = fused_model(model, clip, concepts, result)
        return io.NodeOutput(new_model, new_clip, result.summary())


class OMGOrthogonalityReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGOrthogonalityReport",
            display_name="OMG Orthogonality Report",
            category="OMG/fusion",
            description="How much each pair of concepts interferes: overlap of their input subspaces and "
            "cross-talk on each other's prompts, as a heatmap and a table.",
            inputs=[
                Concepts.Input("concepts", tooltip="The concepts to compare (two or more)."),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="Optional: measure cross-talk on the CLIP features of prompts with each trigger "
                    "instead of on each concept's own input subspace.",
                ),
                _feature_prompts_input(),
            ],
            outputs=[
                io.Image.Output(display_name="heatmap", tooltip="Overlap and cross-talk matrices."),
                io.String.Output(display_name="table", tooltip="The same numbers as text, with the worst layers."),
            ],
        )

    @classmethod
    def execute(cls, concepts, clip=None, feature_prompts="") -> io.NodeOutput:
        concepts = concept_list(concepts)
        features = None
        if clip is not None:
            features, _ = concept_text_features(clip, concepts, parse_templates(feature_prompts), progress=_progress())
        report = cross_talk_report(concepts, features=features, progress=_progress())
        return io.NodeOutput(crosstalk_image(report), report.table())


class OMGOrthogonalize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGOrthogonalize",
            display_name="OMG Orthogonalize",
            category="OMG/fusion",
            description="Make the concepts' input subspaces mutually orthogonal on every shared layer, keeping as "
            "much of each concept as possible; reports the fidelity each one lost.",
            inputs=[
                Concepts.Input("concepts", tooltip="The concepts to orthogonalize."),
                io.Combo.Input(
                    "method",
                    options=["symmetric", "sequential"],
                    default="symmetric",
                    tooltip="symmetric: all concepts give way evenly (strong directions move least). sequential: "
                    "the first concept is kept exactly, each later one gives way to those before it.",
                ),
            ],
            outputs=[
                Concepts.Output(display_name="concepts", tooltip="The orthogonalized concepts (low-rank updates)."),
                io.String.Output(display_name="report", tooltip="Relative error each concept's updates took."),
            ],
        )

    @classmethod
    def execute(cls, concepts, method) -> io.NodeOutput:
        result = orthogonalize(concept_list(concepts), method=method, progress=_progress())
        return io.NodeOutput(result.concepts, result.table())


class OMGSaveFusedLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGSaveFusedLoRA",
            display_name="OMG Save Fused LoRA",
            category="OMG/fusion",
            description="Fuse the concepts and write the result as a standard LoRA file (kohya names) that "
            "the stock Load LoRA node reads. Dense results are truncated by SVD; rank and error are reported.",
            inputs=[
                Concepts.Input("concepts", tooltip="The concepts to fuse."),
                io.Combo.Input("method", options=list(FUSION_METHODS), default="additive", tooltip=_METHOD_TOOLTIP),
                io.Float.Input("regularization", default=0.001, min=0.0, max=100.0, step=0.0001, tooltip=_REG_TOOLTIP),
                io.Int.Input(
                    "rank",
                    default=64,
                    min=1,
                    max=1024,
                    tooltip="Largest rank written per layer. Low-rank results within it are written exactly; "
                    "others are truncated by SVD.",
                ),
                io.String.Input(
                    "filename_prefix",
                    default="loras/omg_fused",
                    tooltip="Written under ComfyUI's output folder; move the file to models/loras to load it.",
                ),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="Needed by least_squares/constrained to encode the concepts' prompts; without it they "
                    "fit on each concept's own input subspace.",
                ),
                _feature_prompts_input(),
                _reg_prompts_input(),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="File written, rank and truncation error.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, regularization=None) -> bool | str:
        return numbers_in_range(cls, regularization=regularization)

    @classmethod
    def execute(
        cls,
        concepts,
        method,
        regularization,
        rank,
        filename_prefix,
        clip=None,
        feature_prompts="",
        regularization_prompts=None,
    ) -> io.NodeOutput:
        import comfy.utils
        import folder_paths

        concepts = concept_list(concepts)
        result = run_fusion(concepts, method, regularization, clip, feature_prompts, regularization_prompts)
        export = export_lora(result, rank, {"omg_family": concepts[0].family})
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory()
        )
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{filename}_{counter:05}_.safetensors")
        comfy.utils.save_torch_file(export.tensors, path, metadata=export.metadata)
        lines = [f"Saved {os.path.join(subfolder, os.path.basename(path))}", export.summary(), result.summary()]
        n_emb = len(result.embeddings)
        if n_emb:
            lines.append(
                f"Note: {n_emb} trigger embedding(s) are not part of a standard LoRA; keep loading the concepts "
                "(or their embeddings) so the trigger words keep their meaning."
            )
        text = "\n".join(lines)
        return io.NodeOutput(text, ui={"text": [text]})


NODES: list[type[io.ComfyNode]] = [OMGFuseConcepts, OMGOrthogonalityReport, OMGOrthogonalize, OMGSaveFusedLoRA]
