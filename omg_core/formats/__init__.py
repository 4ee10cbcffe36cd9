"""Adapter file formats: one reader per format, detection from keys, the native writer.

Everything here is ComfyUI-free: readers translate a format's own names into
the names ComfyUI's LoRA key maps know, and ``omg_core.bridge.binding`` binds them
to a model.
"""

from omg_core.formats.adapter_file import AdapterFile
from omg_core.formats.detect import read_adapter
from omg_core.formats.native import read_native_concept, save_native

__all__ = ["AdapterFile", "read_adapter", "read_native_concept", "save_native"]
