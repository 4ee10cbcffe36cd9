"""The pack's IO types, declared once, and the host's optional core types.

``BoundingBox`` is ComfyUI's core ``BOUNDING_BOX`` type (boxes in pixels, made
by detector nodes such as RT-DETR, SAM 3 and MediaPipe face, drawn by Draw
BBoxes) on hosts that have it (0.33 and later), else None: nodes then simply
leave the inputs and outputs of that type out of their schema.
"""

from comfy_api.latest import io

Concepts = io.Custom("OMG_CONCEPTS")
Regions = io.Custom("OMG_REGIONS")
BoundingBox = getattr(io, "BoundingBox", None)
