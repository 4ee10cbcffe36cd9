"""Train an OMG concept from a folder of images, outside the ComfyUI interface.

    python scripts/train_concept.py --checkpoint sd15.safetensors --images photos/ \\
        --trigger omgcat --class cat --slot 0 --out omgcat.safetensors

ComfyUI runs in this process (the copy set up in .comfyui, or OMG_COMFYUI_DIR)
and loads the checkpoint exactly as its CheckpointLoaderSimple does, so the
file trained here is the file the node would train. Ctrl-C keeps the progress
in ``<out>.state``; running the same command again continues from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    from omg_core.model.forms import FORMS
    from omg_core.pipelines.train import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="SD1.5 or SDXL checkpoint (.safetensors)")
    p.add_argument("--images", required=True, type=Path, help="folder with images of the concept")
    p.add_argument("--trigger", required=True, help="new word that calls up the concept, e.g. omgcat")
    p.add_argument("--class", dest="class_word", required=True, help="what the concept is, e.g. cat")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it is a concept trained earlier (never another file)"
    )
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="seed of noise, timesteps and augmentations")
    p.add_argument("--basis-seed", type=int, default=0, help="seed of the shared basis (same for all concepts)")
    p.add_argument("--slot", type=int, default=0, help="basis slot of this concept (different per concept)")
    p.add_argument("--target", choices=("kv", "attention"), default="kv", help="layers to adapt (default kv)")
    p.add_argument(
        "--form",
        choices=FORMS,
        default="lora",
        help="adapter form (default lora): svd = U·diag(σ)·basis rows (prunable, saved as a LoRA); kronecker = "
        "8x8 ⊗ (U·basis rows) (saved as a LoKr); every form k/v-only and orthogonal across slots",
    )
    p.add_argument(
        "--crop",
        type=float,
        default=TrainConfig.crop,
        help="scale/position augmentation: largest share of a side a random cut drops before it is enlarged "
        f"back (default {TrainConfig.crop}; a cut that leaves out part of the subject teaches it without that part)",
    )
    p.add_argument("--learn-embedding", action="store_true", help="also learn a trigger-word embedding")
    p.add_argument(
        "--embedding-vectors",
        type=int,
        default=TrainConfig.embedding_vectors,
        help="vectors of the learned trigger embedding (with --learn-embedding; more for objects of several parts)",
    )
    p.add_argument("--prior-images", type=Path, help="folder with class images for prior preservation")
    p.add_argument("--resolution", type=int, default=512, help="images are resized and center-cropped to this")
    p.add_argument("--state", type=Path, help="interruption state file (default: <out>.state)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    return p.parse_args(argv)


def load_folder(folder: Path, resolution: int):
    """Every image in ``folder`` as one [N, R, R, 3] batch (shorter side resized, center crop)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise SystemExit(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {folder}")
    batch = []
    for f in files:
        img = ImageOps.exif_transpose(Image.open(f)).convert("RGB")
        img = ImageOps.fit(img, (resolution, resolution), Image.Resampling.LANCZOS)
        batch.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0))
    return torch.stack(batch)


def boot_comfyui(cpu: bool) -> None:
    """ComfyUI in-process, on the GPU unless asked not to (or there is none)."""
    import torch

    import comfy_host  # scripts/ is on sys.path when this file runs as a script

    comfy_host.boot(load_nodes=False, cpu=cpu or not torch.cuda.is_available())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    import torch
    from tqdm import tqdm

    from omg_core.pipelines.train import TrainConfig, check_output_path, train_to_file

    config = TrainConfig(
        trigger=args.trigger,
        class_word=args.class_word,
        steps=args.steps,
        learning_rate=args.lr,
        rank=args.rank,
        basis_seed=args.basis_seed,
        slot=args.slot,
        seed=args.seed,
        target=args.target,
        learn_embedding=args.learn_embedding,
        embedding_vectors=args.embedding_vectors,
        name=args.out.stem,
        form=args.form,
        crop=args.crop,
    )
    try:
        config.validate()
        check_output_path(args.out, args.overwrite)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    images = load_folder(args.images, args.resolution)
    prior = load_folder(args.prior_images, args.resolution) if args.prior_images else None
    if not args.checkpoint.is_file():
        raise SystemExit(f"error: checkpoint {args.checkpoint} does not exist")

    boot_comfyui(args.cpu)
    import comfy.sd

    # Loaded as ComfyUI's executor loads it (under inference mode), so training sees the same tensors.
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(args.checkpoint))
    state = args.state or args.out.with_name(args.out.name + ".state")
    bar = tqdm(total=config.steps, desc=f"training {config.trigger}", unit="step")

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        result = train_to_file(
            model,
            clip,
            vae,
            images,
            config,
            args.out,
            overwrite=args.overwrite,
            prior_images=prior,
            progress=progress,
            checkpoint_path=state,
        )
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted at step {bar.n}; the progress is in {state} — run the same command to continue")
        return 130
    except ValueError as e:
        bar.close()
        raise SystemExit(f"error: {e}") from None
    bar.close()
    if result.resumed_from:
        print(f"continued from step {result.resumed_from}")
    print(
        f"saved {args.out}  ({len(result.concept.unet)} layers, {config.form} rank {config.rank}, slot {config.slot}; "
        f"probe loss {result.probe_loss_start:.4f} -> {result.probe_loss_end:.4f}, {result.seconds:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
