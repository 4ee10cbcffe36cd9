"""OMG (Orthogonal Mix-of-Show): multi-concept personalization nodes for ComfyUI.

Registers the pack's nodes (V3 schema, via ``comfy_entrypoint``) and its web
directory. The logic lives in ``omg_core``, imported by absolute name so that
one copy of it exists however ComfyUI names this folder. Importing this file
costs nothing and needs no ComfyUI; the nodes are imported when ComfyUI asks.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    # Appended so that this folder's nodes/ never shadows ComfyUI's nodes module.
    sys.path.append(_here)

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import OMGExtension

    return OMGExtension()


__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
