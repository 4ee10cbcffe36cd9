"""The models the demo and the example workflows use, made on this machine.

The toy world's SD1.5 checkpoint (assembled from the weights shipped in
``assets/toyworld/``) with its personal concepts — each in an orthogonal
basis slot and as a plain LoRA, and in every external format — which is what
the example workflows draw with; and the small random-weight SD1.5 checkpoint
the tests build their own concepts on. No pretrained weights are downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

CHECKPOINT_NAME = "omg-tiny-sd15.safetensors"
TOYWORLD_CHECKPOINT_NAME = "omg-toyworld-sd15.safetensors"


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() and dst.resolve() == src.resolve():
        return
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    dst.symlink_to(src.resolve())


def ensure_demo_models(models_dir: Path, checkpoint: Path | None = None, concepts=()) -> dict[str, Path]:
    """Fill ``models_dir/checkpoints`` and ``models_dir/loras``; idempotent."""
    import comfy_host

    comfy_host.import_comfy()  # the checkpoint builders use ComfyUI's own model classes
    from omg_core.toyworld.concepts import install_models
    from omg_core.toyworld.tiny_checkpoints import tiny_checkpoint

    models_dir = Path(models_dir)
    (models_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (models_dir / "loras").mkdir(parents=True, exist_ok=True)
    _link(tiny_checkpoint("sd15"), models_dir / "checkpoints" / CHECKPOINT_NAME)
    if checkpoint is not None:
        _link(Path(checkpoint), models_dir / "checkpoints" / Path(checkpoint).name)
    for concept in concepts:  # the user's own concept files for that checkpoint
        _link(Path(concept), models_dir / "loras" / Path(concept).name)
    out = {"checkpoint": models_dir / "checkpoints" / CHECKPOINT_NAME}
    out.update(install_models(models_dir, TOYWORLD_CHECKPOINT_NAME))
    return out
