"""The models the demo and the example workflows use, made on this machine.

A small SD1.5-architecture checkpoint with random weights (no pretrained
weights can be downloaded here) and three concept LoRAs in the pack's native
format, trained on nothing but placed in disjoint slots of the shared
orthogonal basis — so the orthogonality report shows what it should, and the
regional workflows have concepts to place.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

CHECKPOINT_NAME = "omg-tiny-sd15.safetensors"
DEMO_CONCEPTS = (("cat", "omgcat"), ("dog", "omgdog"), ("mug", "omgmug"))
DEMO_RANK = 4
DEMO_BASIS_SEED = 2024


def demo_concept_name(name: str) -> str:
    return f"omg-demo-{name}.safetensors"


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() and dst.resolve() == src.resolve():
        return
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    dst.symlink_to(src.resolve())


def build_demo_concept(name: str, trigger: str, slot: int, unet_shapes: dict[str, tuple[int, int]]):
    """A concept on the tiny model's cross-attention k/v, in basis slot ``slot``,
    with a trigger-token embedding so the trigger word changes the prompt."""
    import torch

    from omg_core.basis import basis_rows
    from omg_core.concept import Concept, LowRankUpdate, TokenEmbedding

    gen = torch.Generator().manual_seed(1000 + slot)
    unet = {}
    for key, (out_f, in_f) in sorted(unet_shapes.items()):
        down = basis_rows(DEMO_BASIS_SEED, slot, DEMO_RANK, in_f)
        up = torch.randn(out_f, DEMO_RANK, generator=gen) * 0.5
        unet[key] = LowRankUpdate(up=up, down=down, scale=1.0)
    embedding = TokenEmbedding(trigger, "clip_l", torch.randn(1, 768, generator=gen) * 0.02)
    return Concept(
        name=name,
        triggers=(trigger,),
        family="sd15",
        source_format="native",
        unet=unet,
        embeddings=(embedding,),
        metadata={"basis_seed": str(DEMO_BASIS_SEED), "basis_slot": str(slot), "rank": str(DEMO_RANK)},
    )


def tiny_sd15_kv_shapes(checkpoint: Path) -> dict[str, tuple[int, int]]:
    """ComfyUI weight keys and shapes of the checkpoint's cross-attention k/v."""
    from safetensors import safe_open

    shapes = {}
    with safe_open(str(checkpoint), framework="pt") as f:
        for k in f.keys():
            if ".attn2.to_k." in k or ".attn2.to_v." in k:
                shapes[k.removeprefix("model.")] = tuple(f.get_slice(k).get_shape())
    return shapes


def ensure_demo_models(models_dir: Path, checkpoint: Path | None = None) -> dict[str, Path]:
    """Fill ``models_dir/checkpoints`` and ``models_dir/loras``; idempotent."""
    import comfy_host

    comfy_host.import_comfy()  # the checkpoint builder uses ComfyUI's own model classes
    from omg_core.formats.native import save_native
    from omg_core.tiny_checkpoints import tiny_checkpoint

    models_dir = Path(models_dir)
    (models_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (models_dir / "loras").mkdir(parents=True, exist_ok=True)
    tiny = tiny_checkpoint("sd15")
    _link(tiny, models_dir / "checkpoints" / CHECKPOINT_NAME)
    if checkpoint is not None:
        _link(Path(checkpoint), models_dir / "checkpoints" / Path(checkpoint).name)
    out = {"checkpoint": models_dir / "checkpoints" / CHECKPOINT_NAME}
    shapes = None
    for slot, (name, trigger) in enumerate(DEMO_CONCEPTS):
        path = models_dir / "loras" / demo_concept_name(name)
        if not path.exists():
            shapes = shapes or tiny_sd15_kv_shapes(tiny)
            save_native(path, build_demo_concept(name, trigger, slot, shapes))
        out[name] = path
    return out
