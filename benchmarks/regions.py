"""Benchmark: sampling-step time with 0–8 regions, as a ratio to plain sampling.

``python -m benchmarks.regions`` builds two UNets of ComfyUI's own SD1.5
class with random weights — the pack's tiny test UNet and an SD1.5-sized one
(860 M parameters) — and times sampling steps through ComfyUI's sampler on
CPU at 256×256 and 512×512 (one torch thread by default): plain, with the pack's regional attention for
2/4/8 boxes, and with the attention-couple approach implemented here for
comparison (every region attends with the full image's queries, repeated per
region, and the outputs are summed under the masks), and with each placement
method (``omg_core.ops.placement``) on a step where it acts (latent composition
also with one UNet call per box, to show what batching the boxes buys, and its
separation alone: a step after the boxes' own passes). The ratio to plain is
taken on the process's CPU time per step, which other processes on a shared
machine disturb far less than wall-clock time (both are printed).
Configurations are interleaved round by round and the median per
configuration is reported, so remaining noise hits all of them alike. Peak memory is the largest
resident-set growth over the process's idle size during the configuration's
runs (freed memory is handed back to the OS before each run).

Imports ComfyUI (in-process, CPU) when run.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from omg_core.toyworld.tiny_checkpoints import SD15_FULL_UNET, build_sd15_inprocess


def boot_comfy() -> None:
    repo = Path(__file__).resolve().parent.parent
    for p in (repo / "scripts", repo):
        if str(p) not in sys.path:
            sys.path.append(str(p))
    import comfy_host

    comfy_host.boot(load_nodes=False)


def grid_boxes(n: int, margin: float = 0.02) -> list[tuple[float, float, float, float]]:
    """``n`` boxes tiling the image in a grid (2: left/right, 4: 2×2, 8: 4×2)."""
    if n == 0:
        return []
    cols = {1: 1, 2: 2, 4: 2, 8: 4, 16: 4}.get(n, n)
    rows = (n + cols - 1) // cols
    out = []
    for i in range(n):
        r, c = divmod(i, cols)
        out.append((c / cols + margin, r / rows + margin, (c + 1) / cols - margin, (r + 1) / rows - margin))
    return out


def region_setup(n: int, width: int, height: int, dim: int = 768, seed: int = 1):
    from omg_core.bridge.attention_patch import RegionPrompt
    from omg_core.ops.regions import Region, RegionSpec

    gen = torch.Generator().manual_seed(seed)
    spec = RegionSpec(width, height, tuple(Region(f"region {i}", box=b) for i, b in enumerate(grid_boxes(n))))
    prompts = [RegionPrompt(torch.randn(1, 77, dim, generator=gen)) for _ in range(n)]
    return spec, prompts


def routed_concepts(model, n: int, every_projection: bool, rank: int = 4, seed: int = 2) -> list:
    """One random concept per region, rank ``rank`` on cross-attention k/v, or on every attention
    projection (what routed mode routes, ``omg_core.ops.routed_layers``): what a routed step costs
    depends on the layers, not on what the weights hold."""
    from omg_core.bridge.attention_patch import cross_attention_layers
    from omg_core.model.concept import Concept, LowRankUpdate
    from omg_core.ops.routed_layers import ROUTED_PROJECTIONS, projection_key

    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.model.named_modules())
    names = ["attn2.to_k", "attn2.to_v"] + (list(ROUTED_PROJECTIONS) if every_projection else [])
    out = []
    for i in range(n):
        unet = {}
        for layer in cross_attention_layers(model):
            block = layer.path.rsplit(".", 1)[0]
            for name in names:
                linear = modules[f"diffusion_model.{block}.{name}"]
                unet[projection_key(block, name)] = LowRankUpdate(
                    torch.randn(linear.out_features, rank, generator=gen) * 0.01,
                    torch.randn(rank, linear.in_features, generator=gen),
                )
        out.append(Concept(name=f"c{i}", triggers=(f"c{i}",), family="sd15", source_format="native", unet=unet))
    return out


class AttentionCouple:
    """The baseline: per block, the conditional queries are repeated once per
    prompt (global + each region), attended in one batched call against each
    prompt's k/v over the whole image, and summed under the prompts' masks
    (global mask 1 everywhere), normalised by the mask sum."""

    def __init__(self, spec, prompts, layer):
        self.spec, self.prompts, self.layer = spec, prompts, layer
        self._masks: dict = {}

    def __deepcopy__(self, memo):
        return self

    def masks(self, h, w, device, dtype):
        from omg_core.ops.regions import coverages

        key = (h, w, str(device), dtype)
        if key not in self._masks:
            m = torch.cat([torch.ones(1, h, w), coverages(self.spec, h, w)])
            self._masks[key] = (m / m.sum(0, keepdim=True)).reshape(len(m), 1, h * w, 1).to(device, dtype)
        return self._masks[key]

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as comfy_attention

        from omg_core.bridge.attention_patch import COND, attention_grid

        heads = extra_options["n_heads"]
        attention = comfy_attention.optimized_attention
        kinds = extra_options["cond_or_uncond"]
        per = q.shape[0] // len(kinds)
        out = attention(q, k, v, heads, transformer_options=extra_options)
        h, w = attention_grid(extra_options, q.shape[1])
        masks = self.masks(h, w, q.device, q.dtype)
        for chunk, kind in enumerate(kinds):
            if kind != COND:
                continue
            rows = slice(chunk * per, (chunk + 1) * per)
            qc, kc, vc = q[rows], k[rows], v[rows]
            ks, vs = [kc[:, :77]], [vc[:, :77]]
            for p in self.prompts:
                ctx = p.cond.to(q.device, k.dtype)
                ks.append(self.layer.module.to_k(ctx).expand(per, -1, -1))
                vs.append(self.layer.module.to_v(ctx).expand(per, -1, -1))
            n = len(ks)
            r = attention(qc.repeat(n, 1, 1), torch.cat(ks), torch.cat(vs), heads, transformer_options=extra_options)
            out[rows] = (r.view(n, per, *r.shape[1:]) * masks).sum(0)
        return out


def couple_model(model, spec, prompts):
    from omg_core.bridge.attention_patch import cross_attention_layers

    clone = model.clone()
    for layer in cross_attention_layers(model):
        clone.set_model_attn2_replace(AttentionCouple(spec, prompts, layer), *layer.key)
    return clone


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """Largest resident-set growth while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        _trim()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.growth = self.peak - self.base


def run_steps(model, width: int, height: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per sampling step (euler, cfg 7:
    cond and uncond batched in one UNet call)."""
    import comfy.sample

    gen = torch.Generator().manual_seed(seed)
    pos = [[torch.randn(1, 77, 768, generator=gen), {}]]
    neg = [[torch.randn(1, 77, 768, generator=gen), {}]]
    latent = torch.zeros(1, 4, height // 8, width // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        comfy.sample.sample(
            model, noise, steps, 7.0, "euler", "normal", pos, neg, latent, denoise=1.0, disable_pbar=True, seed=seed
        )
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def bench(
    name: str, model, size: int, counts, rounds: int, steps: int, couple_counts, log, placements=(), routed=False
) -> list[dict]:
    """``placements``: placement methods timed on steps where they act (``steps`` share 1): a run
    that places on a share s of its steps costs (1 - s) of a regional step plus s of a placed one.
    ``routed``: also routed mode with a concept per region on k/v and on every attention
    projection, alone and with latent composition acting."""
    from dataclasses import replace

    from omg_core.bridge.attention_patch import apply_regional_attention
    from omg_core.ops.placement import PlacementSettings

    configs = [("plain", 0, model)]
    for n in counts:
        spec, prompts = region_setup(n, size, size)
        configs.append(("regional", n, apply_regional_attention(model, spec, prompts)))
        for method in placements:
            placement = replace(PlacementSettings(method), strength=1.0, steps=1.0)
            configs.append(
                (f"regional + {method}", n, apply_regional_attention(model, spec, prompts, placement=placement))
            )
            if method == "latent_composition":  # the boxes' passes one UNet call each, as before batching
                apart = apply_regional_attention(model, spec, prompts, placement=placement)
                apart.model_options["model_function_wrapper"].batched = False
                configs.append((f"regional + {method}, a call per box", n, apart))
                # a step after the boxes' own passes, where only the separation acts
                later = replace(placement, steps=0.0, separation=1.0)
                configs.append(
                    ("regional + separation", n, apply_regional_attention(model, spec, prompts, placement=later))
                )
        for every in (False, True) if routed else ():
            bound = routed_concepts(model, n, every)
            what = "every projection" if every else "k/v"
            configs.append((f"routed, {what}", n, apply_regional_attention(model, spec, prompts, "routed", bound)))
            placement = replace(PlacementSettings("latent_composition"), strength=1.0, steps=1.0)
            configs.append(
                (
                    f"routed, {what} + latent_composition",
                    n,
                    apply_regional_attention(model, spec, prompts, "routed", bound, placement=placement),
                )
            )
            later = replace(placement, steps=0.0, separation=1.0)
            configs.append(
                (
                    f"routed, {what} + separation",
                    n,
                    apply_regional_attention(model, spec, prompts, "routed", bound, placement=later),
                )
            )
    for n in couple_counts:
        spec, prompts = region_setup(n, size, size)
        configs.append(("attention couple", n, couple_model(model, spec, prompts)))
    run_steps(model, size, size, 1)  # warm-up: first-call allocations, thread pools
    times: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(configs))}
    peaks: dict[int, int] = dict.fromkeys(range(len(configs)), 0)
    for r in range(rounds):
        for i, (_, _, m) in enumerate(configs):
            with PeakMemory() as mem:
                times[i].append(run_steps(m, size, size, steps, seed=r))
            peaks[i] = max(peaks[i], mem.growth)
    base_wall = statistics.median(t[0] for t in times[0])
    base_cpu = statistics.median(t[1] for t in times[0])
    rows = []
    for i, (kind, n, _) in enumerate(configs):
        wall = statistics.median(t[0] for t in times[i])
        cpu = statistics.median(t[1] for t in times[i])
        row = dict(
            model=name,
            size=size,
            method=kind,
            regions=n,
            wall_s=wall,
            cpu_s=cpu,
            ratio=cpu / base_cpu,
            wall_ratio=wall / base_wall,
            peak_mb=peaks[i] / 2**20,
        )
        rows.append(row)
        log(
            f"  {name:>11} {size:>3}px {kind:>16} {n:>2} regions: cpu {cpu:7.3f} s/step ×{row['ratio']:5.3f}  "
            f"wall {wall:7.3f} s ×{row['wall_ratio']:5.3f}  +{row['peak_mb']:6.1f} MB"
        )
    return rows


def format_table(rows: list[dict]) -> str:
    head = "| model | size | method | regions | CPU s/step | ratio | wall s/step | wall ratio | peak RSS growth MB |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['size']} | {r['method']} | {r['regions']} | {r['cpu_s']:.3f} | {r['ratio']:.3f} | "
            f"{r['wall_s']:.3f} | {r['wall_ratio']:.3f} | {r['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny UNet, 64 px, 1 round")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per configuration")
    p.add_argument("--no-couple", action="store_true", help="skip the attention-couple baseline")
    p.add_argument("--no-512", action="store_true", help="skip 512×512 for the SD1.5-sized UNet")
    p.add_argument("--tiny-only", action="store_true", help="only the tiny UNet at 256 px (minutes, not an hour)")
    p.add_argument(
        "--toy",
        action="store_true",
        help="instead, the toy world's trained checkpoint at 128 px, the composition benchmark's size (minutes)",
    )
    p.add_argument(
        "--routed",
        action="store_true",
        help="also routed mode with a random concept per region, on k/v and on every attention projection",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: CPU time per step then measures work, robust on a shared machine)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    boot_comfy()
    from omg_core.toyworld.tiny_checkpoints import SD15_UNET

    torch.manual_seed(0)
    log = print

    def couple(counts):
        return () if args.no_couple else counts

    placed = ("self_attention", "latent_composition")

    rows = []
    started = time.perf_counter()
    if args.toy:
        from omg_core.toyworld.generate import load_toyworld

        toy, _, _ = load_toyworld()
        rows += bench(
            "toy world", toy, 128, (2, 4, 8), args.rounds or 5, 1, couple((2, 4, 8)), log, placed, args.routed
        )
    else:
        tiny = build_sd15_inprocess(SD15_UNET)
        if args.quick:
            rows += bench("tiny", tiny, 64, (2, 8), args.rounds or 1, 1, couple((8,)), log, placed, args.routed)
        else:
            rows += bench(
                "tiny", tiny, 256, (2, 4, 8), args.rounds or 3, 1, couple((2, 4, 8)), log, placed, args.routed
            )
        del tiny
    if not (args.toy or args.quick or args.tiny_only):
        log("building the SD1.5-sized UNet (860 M parameters, random weights)…")
        full = build_sd15_inprocess(SD15_FULL_UNET)
        rows += bench("SD1.5-sized", full, 256, (2, 4, 8), args.rounds or 3, 1, couple((2, 4, 8)), log, placed)
        if not args.no_512:
            # one round at 512: a step costs ~4.5× one at 256
            rows += bench("SD1.5-sized", full, 512, (2, 8), args.rounds or 1, 1, couple((8,)), log)
    print()
    print(format_table(rows))
    print(f"\n{torch.get_num_threads()} CPU threads, {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
