"""Concept files for the small random-weight SD1.5 checkpoint the host tests run on.

Trained on nothing, but placed in disjoint slots of one shared orthogonal
basis with a trigger-token embedding each, so the orthogonality report shows
what it should and the regional workflows have concepts to place and bind.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CONCEPTS = (("cat", "omgcat"), ("dog", "omgdog"), ("mug", "omgmug"))
RANK = 4
BASIS_SEED = 2024


def tiny_concept_file(name: str) -> str:
    return f"omg-test-{name}.safetensors"


def build_tiny_concept(name: str, trigger: str, slot: int, unet_shapes: dict[str, tuple[int, int]]):
    from omg_core.model.basis import basis_rows
    from omg_core.model.concept import Concept, LowRankUpdate, TokenEmbedding

    gen = torch.Generator().manual_seed(1000 + slot)
    unet = {}
    for key, (out_f, in_f) in sorted(unet_shapes.items()):
        down = basis_rows(BASIS_SEED, slot, RANK, in_f)
        up = torch.randn(out_f, RANK, generator=gen) * 0.5
        unet[key] = LowRankUpdate(up=up, down=down, scale=1.0)
    embedding = TokenEmbedding(trigger, "clip_l", torch.randn(1, 768, generator=gen) * 0.02)
    return Concept(
        name=name,
        triggers=(trigger,),
        family="sd15",
        source_format="native",
        unet=unet,
        embeddings=(embedding,),
        metadata={"basis_seed": str(BASIS_SEED), "basis_slot": str(slot), "rank": str(RANK)},
    )


def kv_shapes(checkpoint: Path) -> dict[str, tuple[int, int]]:
    """ComfyUI weight keys and shapes of the checkpoint's cross-attention k/v."""
    from safetensors import safe_open

    shapes = {}
    with safe_open(str(checkpoint), framework="pt") as f:
        for k in f.keys():
            if ".attn2.to_k." in k or ".attn2.to_v." in k:
                shapes[k.removeprefix("model.")] = tuple(f.get_slice(k).get_shape())
    return shapes


def write_tiny_concepts(loras: Path, checkpoint: Path) -> None:
    """The three test concepts into ``loras``; idempotent."""
    from omg_core.formats.native import save_native

    shapes = None
    for slot, (name, trigger) in enumerate(TINY_CONCEPTS):
        path = Path(loras) / tiny_concept_file(name)
        if not path.exists():
            shapes = shapes or kv_shapes(checkpoint)
            save_native(path, build_tiny_concept(name, trigger, slot, shapes))
