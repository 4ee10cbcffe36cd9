"""Benchmark: k/v-only versus all-attention LoRA training, per step and in memory.

    python -m omg_core.bench_train [--quick]

Trains the tiny SD1.5 checkpoint (``omg_core.tiny_checkpoints``) with ComfyUI
in this process on the CPU, once per target, each in a fresh child process so
that one run's memory does not hide the other's. Time per step is the median
over the steps after the warm-up; peak memory is the highest resident memory
sampled during training above what the process held with the model loaded.
The trainable-parameter report at full SD1.5 and SDXL shapes comes first.

ComfyUI is booted through ``scripts/comfy_host.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
_MARK = "BENCH_JSON "


def _boot() -> None:
    if str(REPO / "scripts") not in sys.path:
        sys.path.append(str(REPO / "scripts"))
    import comfy_host

    comfy_host.boot(load_nodes=False)


class _PeakRSS:
    """Highest resident set size seen by a sampling thread (CPU memory has no
    allocator statistics to ask)."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def synthetic_images(n: int, size: int) -> torch.Tensor:
    """A coloured disc on a gradient, shifted per image: structure the UNet can learn."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for i in range(n):
        cx, cy = 0.4 + 0.2 * (i % 2), 0.45 + 0.1 * (i % 3)
        disc = (((xx - cx) ** 2 + (yy - cy) ** 2) < 0.08).float()
        out.append(torch.stack([0.9 * disc + 0.1 * xx, 0.2 + 0.3 * yy * (1 - disc), 0.8 * (1 - disc)], -1))
    return torch.stack(out)


def run_child(target: str, steps: int, warmup: int, size: int, rank: int) -> dict:
    _boot()
    import comfy.sd

    from omg_core.tiny_checkpoints import tiny_checkpoint
    from omg_core.train import TrainConfig, train_concept
    from omg_core.train_model import target_layers
    from omg_core.train_report import trainable_parameters

    with torch.inference_mode():  # as ComfyUI's executor loads a checkpoint
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint("sd15")))
    layers = target_layers(model.model.diffusion_model, target)
    shapes = {k: (m.out_features, m.in_features) for k, m in layers.items()}
    config = TrainConfig(
        trigger="omgbench", class_word="ball", steps=steps, learning_rate=1e-3, rank=rank, target=target
    )
    stamps: list[float] = []
    with _PeakRSS() as rss:
        baseline = rss.process.memory_info().rss
        start = time.perf_counter()
        train_concept(
            model,
            clip,
            vae,
            synthetic_images(2, size),
            config,
            progress=lambda d, t: stamps.append(time.perf_counter()),
        )
    times = [b - a for a, b in zip([start] + stamps, stamps)][warmup:]
    return {
        "target": target,
        "layers": len(layers),
        "trainable": trainable_parameters(shapes, rank, target, "basis"),
        "step_s": statistics.median(times),
        "step_times": times,
        "peak_mb": (rss.peak - baseline) / 2**20,
        "threads": torch.get_num_threads(),
    }


def _spawn(target: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "omg_core.bench_train", "--child", target]
    cmd += [
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--size",
        str(args.size),
        "--rank",
        str(args.rank),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK) :])
    raise RuntimeError(f"benchmark child for {target} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="k/v-only versus all-attention LoRA training cost (CPU, tiny SD1.5)")
    p.add_argument("--quick", action="store_true", help="few steps on 32x32 images (a smoke run)")
    p.add_argument("--steps", type=int, help="training steps per target (default 12, quick 4)")
    p.add_argument("--warmup", type=int, help="steps not timed (default 2, quick 1)")
    p.add_argument("--size", type=int, help="image size in pixels (default 64, quick 32)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--child", choices=("kv", "attention"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.quick else 12)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.size = args.size or (32 if args.quick else 64)
    if args.child:
        print(_MARK + json.dumps(run_child(args.child, args.steps, args.warmup, args.size, args.rank)), flush=True)
        return 0

    _boot()
    from omg_core.train_report import format_parameter_report, parameter_report

    print(format_parameter_report(parameter_report(args.rank)))
    print()
    print(
        f"training cost on the tiny SD1.5 checkpoint (CPU, {args.size}x{args.size} images, batch 1, rank {args.rank}, "
        f"{args.steps} steps of which {args.warmup} warm-up)"
    )
    kv, att = _spawn("kv", args), _spawn("attention", args)
    print(f"{'target':<16} {'layers':>6} {'trainable':>10} {'s/step (median)':>16} {'peak MB above model':>20}")
    for r in (kv, att):
        print(f"{r['target']:<16} {r['layers']:>6} {r['trainable']:>10,} {r['step_s']:>16.3f} {r['peak_mb']:>20.1f}")
    print(
        f"ratio k/v : all-attention   time {kv['step_s'] / att['step_s']:.3f}   "
        f"memory {kv['peak_mb'] / max(att['peak_mb'], 1e-9):.3f}   parameters {kv['trainable'] / att['trainable']:.3f}"
        f"   (torch threads: {kv['threads']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
