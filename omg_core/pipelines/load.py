"""Loading a concept onto a chain, as OMG Load Concept does: read and bind the
file (``bridge.binding.load_concept``), then append it to the chain the node
was given without changing that list — the chain checks (no shared trigger
words, one model family) happen here, when the user connects the node."""

from __future__ import annotations

from collections.abc import Sequence

from omg_core.bridge.binding import append_concept, load_concept
from omg_core.model.concept import Concept


def add_concept(
    chain: Sequence[Concept] | None,
    path: str,
    model,
    clip,
    triggers: str | None = None,
    strength: float = 1.0,
) -> list[Concept]:
    """A new chain: ``chain``'s concepts and the file at ``path`` bound to ``model``/``clip``."""
    return append_concept(chain, load_concept(path, model, clip, triggers=triggers, strength=strength))
