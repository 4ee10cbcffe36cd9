"""OMG core: concepts, orthogonality, fusion and regional attention in plain torch.

Nothing here imports ComfyUI at module import time, except the bridge modules
that say so in their docstring (``binding``, ``patching``, ``attention_patch``,
``trigger_tokens``); everything else is testable in milliseconds.
"""
