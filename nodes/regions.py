"""Nodes: regions — where each region prompt applies, and the attention patch
that keeps it there."""

from comfy_api.latest import io, ui

from omg_core.bridge.attention_patch import MODES
from omg_core.ops.placement import DEFAULT_PLACEMENT, PLACEMENTS, PlacementSettings
from omg_core.ops.regions import MAX_FEATHER, MAX_WEIGHT, mask_region, parse_boxes, pixel_boxes, regions_from_widgets
from omg_core.pipelines.attention_maps import attention_maps_image, concept_recorder
from omg_core.pipelines.regional import regional_prompting, regional_warnings
from omg_core.render.region_images import render_preview

from .types import BoundingBox, Concepts, Regions
from .validation import checked, numbers_in_range

MAX_SIZE = 8192  # the width/height widgets' maximum

DEFAULT_BOXES = (
    '{"version": 1, "boxes": [{"x0": 0.05, "y0": 0.1, "x1": 0.45, "y1": 0.9}, '
    '{"x0": 0.55, "y0": 0.1, "x1": 0.95, "y1": 0.9}]}'
)
DEFAULT_PROMPTS = "a photo of omgcat cat\na photo of omgdog dog"


class OMGRegions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGRegions",
            display_name="OMG Regions",
            category="OMG/regions",
            description="Boxes drawn on the node, one prompt per box. Outputs the regions and a preview of where they fall.",
            inputs=[
                io.Int.Input(
                    "width",
                    default=512,
                    min=64,
                    max=MAX_SIZE,
                    step=8,
                    tooltip="Image width in pixels (as in the latent).",
                ),
                io.Int.Input(
                    "height",
                    default=512,
                    min=64,
                    max=MAX_SIZE,
                    step=8,
                    tooltip="Image height in pixels (as in the latent).",
                ),
                io.String.Input(
                    "boxes",
                    default=DEFAULT_BOXES,
                    tooltip='Region boxes as JSON, coordinates 0..1 (x right, y down): {"version": 1, "boxes": '
                    '[{"x0", "y0", "x1", "y1"}, ...]}; optional per box: weight, ratio (0..1), feather (pixels), '
                    "label. Drawn with the canvas on this node.",
                ),
                io.String.Input(
                    "region_prompts",
                    multiline=True,
                    default=DEFAULT_PROMPTS,
                    tooltip="One line per box: line 1 is the prompt of box 1, line 2 of box 2, …",
                ),
                io.String.Input(
                    "region_negative_prompts",
                    multiline=True,
                    default="",
                    optional=True,
                    tooltip="Optional, one line per box: a negative prompt used inside that box. "
                    "An empty or missing line keeps the global negative there.",
                ),
                Regions.Input(
                    "regions",
                    optional=True,
                    tooltip="Regions from another OMG Regions / OMG Mask Region node; they follow this node's boxes.",
                ),
                *cls._core_box_inputs(),
            ],
            outputs=[
                Regions.Output(display_name="regions", tooltip="The regions, for OMG Apply Regional Attention."),
                io.Image.Output(display_name="mask_preview", tooltip="Where each region falls, numbered and coloured."),
                *cls._core_box_outputs(),
            ],
        )

    @staticmethod
    def _core_box_inputs() -> list:
        if BoundingBox is None:
            return []
        return [
            BoundingBox.Input(
                "detected_boxes",
                optional=True,
                force_input=True,
                tooltip="Boxes in pixels from a core detector (RT-DETR, SAM 3, MediaPipe face) or Create Bounding "
                "Boxes: each becomes a region after the drawn boxes, taking the next prompt line; the last line "
                "serves every further detected box (one line puts a concept on every detected face).",
            )
        ]

    @staticmethod
    def _core_box_outputs() -> list:
        if BoundingBox is None:
            return []
        return [
            BoundingBox.Output(
                display_name="bboxes",
                tooltip="Every box region in pixels, labelled with its prompt, for core nodes that draw or crop boxes.",
            )
        ]

    @classmethod
    def validate_inputs(cls, boxes=None, width=None, height=None) -> bool | str:
        # Malformed boxes are answered when the prompt is queued, before any loader runs. A linked size is
        # unknown until it runs: then only the largest image is assumed (the size rules come back at run time).
        # Naming width and height here takes ComfyUI's own min/max check for them over.
        numbers = numbers_in_range(cls, width=width, height=height)
        if numbers is not True or boxes is None:
            return numbers
        return checked(parse_boxes, boxes, width or MAX_SIZE, height or MAX_SIZE)

    @classmethod
    def execute(
        cls, width, height, boxes, region_prompts, region_negative_prompts="", regions=None, detected_boxes=None
    ) -> io.NodeOutput:
        spec = regions_from_widgets(
            width, height, boxes, region_prompts, region_negative_prompts or "", regions, detected_boxes
        )
        outputs = (spec, render_preview(spec))
        if BoundingBox is not None:
            outputs += (pixel_boxes(spec),)
        return io.NodeOutput(*outputs)


class OMGMaskRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGMaskRegion",
            display_name="OMG Mask Region",
            category="OMG/regions",
            description="A region from a MASK instead of a box.",
            inputs=[
                io.Mask.Input("mask", tooltip="Where the prompt applies (white = inside); covers the whole image."),
                io.String.Input("prompt", multiline=True, default="", tooltip="What belongs inside the mask."),
                io.Float.Input(
                    "weight",
                    default=1.0,
                    min=0.0,
                    max=MAX_WEIGHT,
                    step=0.05,
                    tooltip="Share against overlapping regions; below 1 it also blends with the global prompt.",
                ),
                io.Int.Input(
                    "feather",
                    default=0,
                    min=0,
                    max=int(MAX_FEATHER),
                    step=1,
                    tooltip="Pixels over which the mask fades in from its edge (inward).",
                ),
                io.Float.Input(
                    "ratio",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Replace ratio: 1 replaces the global prompt inside the mask, 0 keeps it.",
                ),
                io.String.Input(
                    "negative_prompt",
                    multiline=True,
                    default="",
                    optional=True,
                    tooltip="Optional negative prompt inside the mask; empty keeps the global negative.",
                ),
                Regions.Input("regions", optional=True, tooltip="Regions this one is added after."),
            ],
            outputs=[Regions.Output(display_name="regions", tooltip="The regions, with this mask region last.")],
        )

    @classmethod
    def validate_inputs(cls, weight=None, ratio=None, feather=None) -> bool | str:
        return numbers_in_range(cls, weight=weight, ratio=ratio, feather=feather)

    @classmethod
    def execute(cls, mask, prompt, weight, feather, ratio, negative_prompt="", regions=None) -> io.NodeOutput:
        return io.NodeOutput(mask_region(mask, prompt, weight, feather, ratio, negative_prompt or "", regions))


def _share_input(name: str, default: float, tooltip: str):
    """A placement setting that is a share (0..1) of something, in steps of 0.05."""
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.05, optional=True, tooltip=tooltip)


class OMGApplyRegionalAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGApplyRegionalAttention",
            display_name="OMG Apply Regional Attention",
            category="OMG/regions",
            description="Confines each region's prompt to its region with a cross-attention patch "
            "(one UNet pass per step). Use the MODEL and the positive CONDITIONING it returns.",
            inputs=[
                io.Model.Input("model", tooltip="Fused mode: the fused model. Routed mode: the base model."),
                io.Clip.Input("clip", tooltip="Fused mode: the fused CLIP. Routed mode: the base CLIP."),
                Regions.Input("regions", tooltip="From OMG Regions or OMG Mask Region."),
                io.String.Input(
                    "base_prompt",
                    multiline=True,
                    default="a photo of a cat and a dog in a garden",
                    tooltip="The global prompt: the whole image, and everything outside the regions.",
                ),
                io.Combo.Input(
                    "mode",
                    options=list(MODES),
                    default="fused",
                    tooltip="fused: every prompt uses the model as given (the fused concepts). routed: each region "
                    "uses only the concept whose trigger word it contains (its k/v, and its other attention projections "
                    "where the region is), the global prompt the base model — no cross-talk by construction.",
                ),
                Concepts.Input(
                    "concepts",
                    optional=True,
                    tooltip="Routed mode: the concepts regions may use. Either mode: whose trigger words "
                    "record_attention_maps records.",
                ),
                io.Boolean.Input(
                    "record_attention_maps",
                    default=False,
                    optional=True,
                    tooltip="Record each concept trigger word's cross-attention map while sampling (needs the "
                    "concepts input), for OMG Attention Maps. Costs a little time per step.",
                ),
                # Appended after the older widgets: saved workflows list widget values by position.
                io.Combo.Input(
                    "placement",
                    options=list(PLACEMENTS),
                    default=DEFAULT_PLACEMENT,
                    optional=True,
                    tooltip="How hard each concept is pushed into its box early in sampling. attention: regional "
                    "attention only (one UNet pass per step). self_attention: in the first placement_steps a "
                    "query inside a box attends within its box and the background within the background, so "
                    "boxes do not merge (one UNet pass). latent_composition: in the first placement_steps of "
                    "the run each box is also denoised on its own crop with its own prompt (routed: its own "
                    "concept) and blended in by placement_strength — the boxes' windows (placement_window) go "
                    "through the UNet together, one extra call in those steps; placement_separation keeps the "
                    "boxes apart in self-attention.",
                ),
                _share_input(
                    "placement_strength",
                    PlacementSettings().strength,
                    "Share of the box's own prediction inside the box (0: as attention, 1: the box's own).",
                ),
                _share_input(
                    "placement_steps",
                    PlacementSettings().steps,
                    "Share of the sampling steps, from the first, that placement acts on; later steps "
                    "use regional attention alone and join the boxes with the rest of the image.",
                ),
                _share_input(
                    "placement_window",
                    PlacementSettings().window,
                    "latent_composition: each box's own pass denoises at least this share of the image's "
                    "width and height around the box (only the box is blended in). A small box alone is an image "
                    "far smaller than the model was trained on, and comes back empty; 0: the box itself.",
                ),
                _share_input(
                    "placement_separation",
                    PlacementSettings().separation,
                    "latent_composition: share of the sampling steps, from the first, in which the full image's "
                    "self-attention keeps the boxes apart (a query in a box sees its own box and the background, "
                    "never another box), so that one box's object does not take another's parts once the boxes' "
                    "own passes stop. No extra UNet pass; 0: off.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="A patched clone; the input model is unchanged."),
                io.Conditioning.Output(display_name="positive", tooltip="The global prompt, for the sampler."),
                io.Image.Output(display_name="mask_preview", tooltip="Where each region falls."),
            ],
        )

    @classmethod
    def validate_inputs(
        cls, placement_strength=None, placement_steps=None, placement_window=None, placement_separation=None
    ) -> bool | str:
        return numbers_in_range(
            cls,
            placement_strength=placement_strength,
            placement_steps=placement_steps,
            placement_window=placement_window,
            placement_separation=placement_separation,
        )

    @classmethod
    def execute(
        cls,
        model,
        clip,
        regions,
        base_prompt,
        mode,
        concepts=None,
        placement=DEFAULT_PLACEMENT,
        placement_strength=PlacementSettings().strength,
        placement_steps=PlacementSettings().steps,
        placement_window=PlacementSettings().window,
        placement_separation=PlacementSettings().separation,
        record_attention_maps=False,
    ) -> io.NodeOutput:
        recorder = concept_recorder(model, clip, regions, mode, concepts) if record_attention_maps else None
        how = PlacementSettings(placement, placement_strength, placement_steps, placement_window, placement_separation)
        patched, positive = regional_prompting(model, clip, regions, base_prompt, mode, concepts, recorder, how)
        preview = render_preview(regions)
        # Warnings go to the console (regional_warnings) and, written under the preview, onto the node itself;
        # the mask_preview output keeps the image's own size, for workflows that lay it over the image.
        notes = regional_warnings(regions, mode, concepts)
        shown = render_preview(regions, notes=notes) if notes else preview
        return io.NodeOutput(patched, positive, preview, ui=ui.PreviewImage(shown, cls=cls))


class OMGAttentionMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OMGAttentionMaps",
            display_name="OMG Attention Maps",
            category="OMG/regions",
            description="Where each concept token was attended in the latest sampling run, one panel per token, "
            "with the region boxes: a concept that stayed in its box lights up only inside it.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The MODEL of OMG Apply Regional Attention with record_attention_maps on "
                    "(the one the KSampler samples with).",
                ),
                io.Latent.Input(
                    "samples", tooltip="The KSampler's LATENT: makes this node run after sampling (not read)."
                ),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="One attention-map panel per concept token.")],
        )

    @classmethod
    def execute(cls, model, samples) -> io.NodeOutput:
        return io.NodeOutput(attention_maps_image(model))


NODES = [OMGRegions, OMGMaskRegion, OMGApplyRegionalAttention, OMGAttentionMaps]
