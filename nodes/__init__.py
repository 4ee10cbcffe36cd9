"""The pack's ComfyUI nodes, one module per theme; each module lists its
nodes in ``NODES``."""

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from . import concepts, fusion, regions, training

_MODULES = (concepts, fusion, regions, training)


class OMGExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in _MODULES for node in module.NODES]
