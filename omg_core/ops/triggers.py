"""Finding trigger words in a prompt: one rule for the text encoder's token
table (``bridge.trigger_tokens``) and the layer-wise embeddings (``ops.layerwise``),
so a word that one of them sees the other sees too."""

from __future__ import annotations

import re
from collections.abc import Iterable


def trigger_pattern(triggers: Iterable[str]) -> re.Pattern:
    """A whole-word, case-insensitive match of any trigger (longest first), not
    inside another word and not already after ``embedding:``."""
    words = sorted(triggers, key=len, reverse=True)
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![\w<>:])({alternatives})(?![\w<>])", re.IGNORECASE)
