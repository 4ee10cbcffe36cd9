"""Fusion benchmark: speed, fidelity, cross-talk and drift at real SD1.5/SDXL shapes.

    python -m benchmarks.fusion            # SD1.5 and SDXL, N = 2, 4, 8 (about a minute on 2 cores)
    python -m benchmarks.fusion --quick    # tiny shapes, seconds (what the tests run)

Layers are the UNet cross-attention k/v projections with their real names
and shapes (SD1.5: 16 attn2 blocks, out 320/640/1280, in 768; SDXL: 70 attn2
blocks, out 640/1280, in 2048), rank-8 concepts on every one of them.

Synthetic concepts, stated assumptions:

* **orthogonal**: each concept's down-projection is its own slot of the
  shared orthonormal basis (``omg_core.model.basis``), the same rows in every layer;
* **random**: independent Gaussian down-projections (independently trained
  LoRAs), also shared by a concept's layers; ups are Gaussian.
* A concept's text features are 4 rows every prompt shares (BOS, "a photo
  of") plus 9 trigger rows (3 prompts × 3 tokens) with 75 % of their energy in
  the concept's own input subspace and 25 % isotropic: a trained concept reads
  its trigger, imperfectly. Cross-talk and fidelity are measured on the
  trigger rows; drift on 64 unrelated isotropic rows (held out; the
  constrained method regularises on a different 64).

Gradient descent (Adam on the dense ΔW of each layer, as Mix-of-Show's
gradient fusion does, from ΔW = 0) solves the same least-squares problem as
the closed form until it has closed 99 % of the gap between the starting loss
and the closed-form optimum. Each layer is an independent problem, so GD is
timed on one layer of each shape and multiplied by the number of layers of
that shape; the closed form is timed on the whole model.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omg_core.model.basis import basis_rows
from omg_core.model.concept import Concept, LowRankUpdate
from omg_core.ops.fusion import FUSION_METHODS, dedupe_features, drift, fidelity_errors, fuse
from omg_core.ops.orthogonality import cross_talk_report

SHARED_ROWS = 4
TRIGGER_ROWS = 9
OWN_ENERGY = 0.75
UNRELATED_ROWS = 64
RANK = 8
LAMBDA = 1e-3


@dataclass(frozen=True)
class Shape:
    name: str
    context: int
    layers: tuple[tuple[str, int], ...]  # (weight key, out features)


def _attn2_keys(blocks: Sequence[tuple[str, int, int]]) -> tuple[tuple[str, int], ...]:
    keys = []
    for block, depth, width in blocks:
        for t in range(depth):
            for proj in ("to_k", "to_v"):
                keys.append((f"diffusion_model.{block}.transformer_blocks.{t}.attn2.{proj}.weight", width))
    return tuple(keys)


def sd15_shape() -> Shape:
    inp = [("input_blocks.1.1", 1, 320), ("input_blocks.2.1", 1, 320), ("input_blocks.4.1", 1, 640)]
    inp += [("input_blocks.5.1", 1, 640), ("input_blocks.7.1", 1, 1280), ("input_blocks.8.1", 1, 1280)]
    mid = [("middle_block.1", 1, 1280)]
    out = [(f"output_blocks.{i}.1", 1, 1280) for i in (3, 4, 5)]
    out += [(f"output_blocks.{i}.1", 1, 640) for i in (6, 7, 8)]
    out += [(f"output_blocks.{i}.1", 1, 320) for i in (9, 10, 11)]
    return Shape("SD1.5", 768, _attn2_keys(inp + mid + out))


def sdxl_shape() -> Shape:
    inp = [(f"input_blocks.{i}.1", 2, 640) for i in (4, 5)] + [(f"input_blocks.{i}.1", 10, 1280) for i in (7, 8)]
    mid = [("middle_block.1", 10, 1280)]
    out = [(f"output_blocks.{i}.1", 10, 1280) for i in (0, 1, 2)] + [
        (f"output_blocks.{i}.1", 2, 640) for i in (3, 4, 5)
    ]
    return Shape("SDXL", 2048, _attn2_keys(inp + mid + out))


def quick_shape() -> Shape:
    return Shape("tiny", 64, _attn2_keys([("input_blocks.1.1", 1, 32), ("middle_block.1", 1, 48)]))


# --------------------------------------------------------------- synthetic concepts
def make_concepts(shape: Shape, n: int, kind: str, seed: int = 0) -> list[Concept]:
    g = torch.Generator().manual_seed(seed * 1000 + n)
    concepts = []
    for i in range(n):
        if kind == "orthogonal":
            down = basis_rows(seed, i, RANK, shape.context)
        else:
            down = torch.randn(RANK, shape.context, generator=g) / shape.context**0.5
        unet = {key: LowRankUpdate(torch.randn(out, RANK, generator=g) * 0.02, down) for key, out in shape.layers}
        concepts.append(Concept(f"c{i}", (f"c{i}",), "sd15", "synthetic", unet=unet))
    return concepts


def make_features(concepts: Sequence[Concept], context: int, seed: int = 0):
    """(fit features per concept, trigger rows per concept, regularisation rows, unrelated rows)."""
    g = torch.Generator().manual_seed(seed + 7)
    shared = torch.randn(SHARED_ROWS, context, generator=g)
    fit, trigger = {}, {}
    for c in concepts:
        q = torch.linalg.qr(next(iter(c.unet.values())).down.double().T)[0].T.float()  # own subspace, [r, in]
        own = torch.randn(TRIGGER_ROWS, q.shape[0], generator=g) @ q
        own = own / own.norm(dim=1, keepdim=True) * context**0.5
        noise = torch.randn(TRIGGER_ROWS, context, generator=g)
        rows = OWN_ENERGY**0.5 * own + (1 - OWN_ENERGY) ** 0.5 * noise
        trigger[c.name] = rows
        fit[c.name] = torch.cat([shared, rows])
    reg = torch.randn(UNRELATED_ROWS, context, generator=g)
    unrelated = torch.randn(UNRELATED_ROWS, context, generator=g)
    return fit, trigger, reg, unrelated


# --------------------------------------------------------------- gradient descent baseline
def _ls_problem(concepts, fit, key):
    """Rows U [m, in], targets T [m, out] and λ_eff of one layer's least-squares problem."""
    fs = dedupe_features([fit[c.name].double() for c in concepts])
    t = sum(c.unet[key].apply(fs.rows) * fs.membership[i].unsqueeze(1) for i, c in enumerate(concepts))
    lam = LAMBDA * float(fs.rows.square().sum()) / fs.rows.shape[0]
    return fs.rows.float(), t.float(), lam


def _loss(dw, u, t, lam):
    return (u @ dw.T - t).square().sum() + lam * dw.square().sum()


def gd_layer(concepts, fit, key, max_steps: int = 3000) -> tuple[float, int, float]:
    """Adam on the dense ΔW of one layer: (seconds, steps, fraction of the gap closed)."""
    u, t, lam = _ls_problem(concepts, fit, key)
    ud = u.double()
    closed = torch.linalg.solve(ud @ ud.T + lam * torch.eye(ud.shape[0], dtype=torch.float64), t.double()).T @ ud
    best = float(_loss(closed.float(), u, t, lam))
    dw = torch.zeros(t.shape[1], u.shape[1], requires_grad=True)
    start = float(_loss(dw.detach(), u, t, lam))
    goal = best + 0.01 * (start - best)
    lr = 0.1 * float(closed.abs().mean())  # a tuned step: what anyone running GD would pick
    opt = torch.optim.Adam([dw], lr=lr)
    began = time.perf_counter()
    steps = 0
    loss = start
    while steps < max_steps:
        opt.zero_grad()
        value = _loss(dw, u, t, lam)
        loss = float(value.detach())
        if loss <= goal:
            break
        value.backward()
        opt.step()
        steps += 1
    return time.perf_counter() - began, steps, (start - loss) / (start - best) if start > best else 1.0


def gd_model(concepts, fit, shape: Shape, max_steps: int) -> tuple[float, int, float]:
    """GD time for all layers, from one measured layer per distinct shape."""
    total, steps, closed = 0.0, 0, 1.0
    counts: dict[int, list[str]] = {}
    for key, out in shape.layers:
        counts.setdefault(out, []).append(key)
    for _out, keys in counts.items():
        seconds, n_steps, frac = gd_layer(concepts, fit, keys[0], max_steps)
        total += seconds * len(keys)
        steps = max(steps, n_steps)
        closed = min(closed, frac)
    return total, steps, closed


# --------------------------------------------------------------- measuring
def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, caches)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def _offdiag_mean(m: torch.Tensor) -> float:
    mask = ~torch.eye(m.shape[0], dtype=torch.bool)
    return float(m[mask].mean())


@dataclass
class Row:
    shape: str
    n: int
    kind: str
    method: str
    ms: float
    err_mean: float
    err_max: float
    drift: float


def bench_set(shape: Shape, n: int, kind: str, repeats: int) -> tuple[list[Row], float, dict]:
    concepts = make_concepts(shape, n, kind)
    fit, trigger, reg, unrelated = make_features(concepts, shape.context)
    crosstalk = _offdiag_mean(cross_talk_report(concepts, features=trigger).crosstalk)
    rows = []
    for method in FUSION_METHODS:
        kwargs = dict(features=fit, regularization=LAMBDA)
        if method == "constrained":
            kwargs["reg_features"] = reg
        if method == "additive":
            kwargs = {}
        ms = 1000 * _time(lambda m=method, kw=kwargs: fuse(concepts, m, measure=False, **kw), repeats)
        result = fuse(concepts, method, measure=False, **kwargs)
        errs = fidelity_errors(result, concepts, trigger)
        rows.append(
            Row(
                shape.name,
                n,
                kind,
                method,
                ms,
                statistics.fmean(errs.values()),
                max(errs.values()),
                drift(result, concepts, trigger, unrelated),
            )
        )
    return rows, crosstalk, {"concepts": concepts, "fit": fit}


def run(shapes: Sequence[Shape], ns: Sequence[int], repeats: int, gd_steps: int, out=print) -> dict:
    torch.manual_seed(0)
    results: dict = {"rows": [], "crosstalk": {}, "gd": []}
    for shape in shapes:
        out(f"\n{shape.name}: {len(shape.layers)} cross-attention k/v layers, context {shape.context}, rank {RANK}")
        out(f"{'N':>2} {'concepts':<10} {'method':<13} {'time ms':>9} {'own err mean':>13} {'max':>8} {'drift':>7}")
        for n in ns:
            for kind in ("orthogonal", "random"):
                rows, crosstalk, data = bench_set(shape, n, kind, repeats)
                results["crosstalk"][(shape.name, n, kind)] = crosstalk
                for r in rows:
                    results["rows"].append(r)
                    out(
                        f"{n:>2} {kind:<10} {r.method:<13} {r.ms:>9.2f} {100 * r.err_mean:>12.2f}% "
                        f"{100 * r.err_max:>7.2f}% {r.drift:>7.3f}"
                    )
                if kind == "random":
                    ls_ms = next(r.ms for r in rows if r.method == "least_squares")
                    gd_s, steps, closed = gd_model(data["concepts"], data["fit"], shape, gd_steps)
                    results["gd"].append((shape.name, n, ls_ms, 1000 * gd_s, steps, closed))
        out("\nCross-talk of the concept sets (mean pairwise ||dW_j X_i|| / ||dW_i X_i|| on trigger rows)")
        out(f"{'N':>2} {'orthogonal':>11} {'random':>9} {'ratio':>7}")
        for n in ns:
            o = results["crosstalk"][(shape.name, n, "orthogonal")]
            r = results["crosstalk"][(shape.name, n, "random")]
            out(f"{n:>2} {o:>11.4f} {r:>9.4f} {o / r:>7.3f}")
        out("\nLeast squares: closed form vs gradient descent (Adam, same problem, 99% of the gap closed)")
        out(f"{'N':>2} {'closed ms':>10} {'GD ms':>10} {'GD steps':>9} {'speed-up':>9}")
        for name, n, ls_ms, gd_ms, steps, closed in results["gd"]:
            if name == shape.name:
                note = "" if closed >= 0.99 else f"  (GD stopped at {steps} steps, {100 * closed:.1f}% of the gap)"
                out(f"{n:>2} {ls_ms:>10.2f} {gd_ms:>10.0f} {steps:>9} {gd_ms / ls_ms:>8.0f}x{note}")
    return results


def targets(results: dict, out=print) -> bool:
    ok = True
    add8 = [r.ms for r in results["rows"] if r.shape == "SD1.5" and r.n == 8 and r.method == "additive"]
    if add8:
        worst = max(add8)
        passed = worst < 50
        ok &= passed
        out(f"target additive fusion of 8 SD1.5 concepts < 50 ms: {worst:.2f} ms  {'PASS' if passed else 'FAIL'}")
    ratios = [gd / ls for _, _, ls, gd, _, _ in results["gd"]]
    if ratios:
        passed = min(ratios) >= 100
        ok &= passed
        out(f"target least squares >= 100x faster than GD: worst {min(ratios):.0f}x  {'PASS' if passed else 'FAIL'}")
    cts = results["crosstalk"]
    pairs = [(cts[k], cts[(k[0], k[1], "random")]) for k in cts if k[2] == "orthogonal"]
    if pairs:
        worst = max(o / r for o, r in pairs)
        passed = worst < 1
        ok &= passed
        out(
            f"target orthogonal cross-talk lower than random: ratio orthogonal/random <= {worst:.3f}  "
            f"{'PASS' if passed else 'FAIL'}"
        )
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, N = 2, 3 (seconds)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (the minimum is reported)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these are small problems, and on a busy machine intra-op threads "
        "cost more in waiting than they gain; 0 = torch's default)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        results = run([quick_shape()], [2, 3], repeats=1, gd_steps=2000)
    else:
        results = run([sd15_shape(), sdxl_shape()], [2, 4, 8], repeats=args.repeats, gd_steps=3000)
    print()
    ok = targets(results)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
