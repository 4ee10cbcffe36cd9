"""Benchmark: k/v-only versus all-attention LoRA training, and the adapter forms
(lora, svd, kronecker) on the k/v layers, per step and in memory.

    python -m benchmarks.training [--quick]

Trains the tiny SD1.5 checkpoint (``omg_core.toyworld.tiny_checkpoints``) with ComfyUI
in this process on the CPU, once per target and once per form, each in a fresh
child process so that one run's memory does not hide the other's. Time per step is the median
over the steps after the warm-up. Memory is the bytes autograd keeps for the
backward pass per step (what training adds to inference at a given batch),
and the resident-memory peak of the whole run above the loaded model.
The trainable-parameter report at full SD1.5 and SDXL shapes comes first.
Step time is reported as CPU time (this process's threads) as well as wall
time: on a shared machine the wall time measures the neighbours too.

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
    """Highest resident set size seen by a sampling thread."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return self.process.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.interval)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class _StepMeter:
    """Per step: wall time, CPU time (this process's threads: it holds on a
    busy machine), and the bytes autograd keeps for the backward pass.

    The resident-memory peak of a step cannot show activation memory on the
    CPU (freed blocks are reused without new pages), so the step's memory is
    counted where it is made: every tensor saved for backward, each storage
    once, the model's weights (and views of them) excluded: they are held
    whether or not one trains."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.saved_mb: list[float] = []
        self._saved: dict[int, int] = {}
        self._weights: set[int] | None = None
        self._last: tuple[float, float] | None = None

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if self._weights is None:  # the weights in place while the training clone is loaded
            self._weights = {p.untyped_storage().data_ptr() for p in self.module.parameters()}
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._weights:
            self._saved[storage.data_ptr()] = storage.nbytes()
        return t

    def __call__(self, done: int, total: int) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        if self._last is not None:  # the first call closes setup + step 1: not a clean step
            self.wall.append(wall - self._last[0])
            self.cpu.append(cpu - self._last[1])
        self.saved_mb.append(sum(self._saved.values()) / 2**20)
        self._saved = {}
        self._last = (time.perf_counter(), time.process_time())


def synthetic_images(n: int, size: int) -> torch.Tensor:
    """A coloured disc on a gradient, shifted per image: structure the UNet can learn."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for i in range(n):
        cx, cy = 0.4 + 0.2 * (i % 2), 0.45 + 0.1 * (i % 3)
        disc = (((xx - cx) ** 2 + (yy - cy) ** 2) < 0.08).float()
        out.append(torch.stack([0.9 * disc + 0.1 * xx, 0.2 + 0.3 * yy * (1 - disc), 0.8 * (1 - disc)], -1))
    return torch.stack(out)


def run_child(target: str, form: str, steps: int, warmup: int, size: int, rank: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    _boot()
    import comfy.sd

    from omg_core.bridge.train_model import target_layers
    from omg_core.bridge.train_report import trainable_parameters
    from omg_core.pipelines.train import TrainConfig, train_concept
    from omg_core.toyworld.tiny_checkpoints import tiny_checkpoint

    with torch.inference_mode():  # as ComfyUI's executor loads a checkpoint
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint("sd15")))
    layers = target_layers(model.model.diffusion_model, target)
    shapes = {k: (m.out_features, m.in_features) for k, m in layers.items()}
    config = TrainConfig(
        trigger="omgbench", class_word="ball", steps=steps, learning_rate=1e-3, rank=rank, target=target, form=form
    )
    meter = _StepMeter(model.model)
    with _PeakRSS() as rss, torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
        baseline = rss.now()
        train_concept(model, clip, vae, synthetic_images(2, size), config, progress=meter)
    skip = max(0, warmup - 1)  # step 1 is never timed
    return {
        "target": target,
        "form": form,
        "layers": len(layers),
        "trainable": trainable_parameters(shapes, rank, target, "basis", form),
        "wall_s": statistics.median(meter.wall[skip:]),
        "cpu_s": statistics.median(meter.cpu[skip:]),
        "saved_mb": max(meter.saved_mb),
        "peak_mb": (rss.peak - baseline) / 2**20,
        "threads": torch.get_num_threads(),
        "rank": rank,
    }


def _spawn(target: str, args: argparse.Namespace, form: str = "lora") -> dict:
    cmd = [sys.executable, "-m", "benchmarks.training", "--child", f"{target}:{form}"]
    cmd += [
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--size",
        str(args.size),
        "--rank",
        str(args.rank),
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK) :])
    raise RuntimeError(f"benchmark child for {target}/{form} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="k/v-only versus all-attention LoRA training cost, and the adapter forms (CPU, tiny SD1.5)"
    )
    p.add_argument("--quick", action="store_true", help="few steps on 32x32 images (a smoke run)")
    p.add_argument("--steps", type=int, help="training steps per target (default 12, quick 4)")
    p.add_argument("--warmup", type=int, help="steps not timed (default 2, quick 1)")
    p.add_argument("--size", type=int, help="image size in pixels (default 64, quick 32)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: waiting threads spin and inflate CPU time)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)  # "target:form" of one child run
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.quick else 12)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.size = args.size or (32 if args.quick else 64)
    if args.child:
        target, form = args.child.split(":")
        result = run_child(target, form, args.steps, args.warmup, args.size, args.rank, args.threads)
        print(_MARK + json.dumps(result), flush=True)
        return 0

    _boot()
    from omg_core.bridge.train_report import format_parameter_report, parameter_report

    print(format_parameter_report(parameter_report(args.rank)))
    print()
    print(
        f"training cost on the tiny SD1.5 checkpoint (CPU, {args.size}x{args.size} images, batch 1, rank {args.rank}, "
        f"{args.steps} steps of which {args.warmup} warm-up)"
    )
    kv, att = _spawn("kv", args), _spawn("attention", args)
    print(
        f"{'target':<10} {'layers':>6} {'trainable':>10} {'wall s/step':>12} {'CPU s/step':>11} "
        f"{'saved for backward MB':>22} {'run peak MB':>12}"
    )
    for r in (kv, att):
        print(
            f"{r['target']:<10} {r['layers']:>6} {r['trainable']:>10,} {r['wall_s']:>12.3f} {r['cpu_s']:>11.3f} "
            f"{r['saved_mb']:>22.2f} {r['peak_mb']:>12.1f}"
        )
    print(
        f"ratio k/v : all-attention   CPU time/step {kv['cpu_s'] / att['cpu_s']:.3f}   "
        f"wall time/step {kv['wall_s'] / att['wall_s']:.3f}   saved for backward {kv['saved_mb'] / att['saved_mb']:.3f}   "
        f"run peak {kv['peak_mb'] / max(att['peak_mb'], 1e-9):.3f}   parameters {kv['trainable'] / att['trainable']:.3f}"
    )
    print(
        "(medians over the timed steps; 'saved for backward': activations autograd holds per step; "
        f"'run peak MB': above the loaded model, including the trainable weight copy; torch threads {kv['threads']})"
    )
    print()
    print(_forms_table([kv, _spawn("kv", args, "svd"), _spawn("kv", args, "kronecker")]))
    return 0


# Rank of one layer's ΔW per form at rank r: lora and svd r, kronecker rank(w1)·rank(w2) = 8·r.
_DELTA_RANK = {"lora": lambda r: r, "svd": lambda r: r, "kronecker": lambda r: 8 * r}


def _forms_table(rows: list[dict]) -> str:
    """The adapter forms side by side on the k/v layers, each against lora."""
    lora = rows[0]
    lines = [
        "adapter forms on the k/v layers (same steps, images and seed; ratios to lora)",
        f"{'form':<10} {'trainable':>10} {'rank ΔW':>8} {'wall s/step':>12} {'CPU s/step':>11} "
        f"{'saved for backward MB':>22} {'run peak MB':>12} {'params':>7} {'CPU time':>9} {'backward':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r['form']:<10} {r['trainable']:>10,} {_DELTA_RANK[r['form']](r['rank']):>8} {r['wall_s']:>12.3f} "
            f"{r['cpu_s']:>11.3f} {r['saved_mb']:>22.2f} {r['peak_mb']:>12.1f} "
            f"{r['trainable'] / lora['trainable']:>7.3f} {r['cpu_s'] / lora['cpu_s']:>9.3f} "
            f"{r['saved_mb'] / lora['saved_mb']:>9.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
