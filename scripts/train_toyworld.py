"""Train the toy world from scratch: autoencoder, detector, UNet — then ship it.

    python scripts/train_toyworld.py            # the base model: autoencoder, detector, UNet (~55 + ~45 CPU-minutes)
    python scripts/train_toyworld.py --concepts # the personal concepts on the shipped base model (~60 CPU-minutes)
    python scripts/train_toyworld.py --quick    # a smoke run with tiny settings, writes nothing to assets/

Stages are cached under ``.cache/toyworld/`` so an interrupted run resumes at
the stage it was in; the UNet's stages are kept there in the shipped format
(``unet-64.safetensors``, then ``unet-compose-N.safetensors`` per composition
round), and a run trains only the stages after the last one it finds — put a
shipped ``base_weights.safetensors`` there as ``unet-compose-N.safetensors`` to
train only the rounds after N. The result, written to ``assets/toyworld/``:
``base_weights.safetensors`` (UNet int8 + TAESD fp16), ``detector.safetensors``,
``manifest.json`` (settings, text-encoder probe, timings, measured accuracy) and
``concepts/`` (each personal concept of every kind of ``omg_core.toyworld.concepts.KINDS``, and in every
external format).
Everything is seeded; the same settings give the same weights on the same
software versions. On a shared machine run it with ``nice -n 19`` and
``--threads 1``: two threads that wait on each other waste most of their time
when other processes hold the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO / "scripts", REPO):
    if str(p) not in sys.path:
        sys.path.append(str(p))


class Clock:
    """Wall and CPU seconds per stage (the CPU figure is what the machine's load does not change).

    Kept in ``timings.json`` beside the cached stages, so a resumed run still
    reports what every stage cost when it ran."""

    def __init__(self, path: Path):
        self.path = path
        self.stages: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name, fn, *args, **kwargs):
        w, c = time.time(), time.process_time()
        out = fn(*args, **kwargs)
        self.stages[name] = {"wall_s": round(time.time() - w, 1), "cpu_s": round(time.process_time() - c, 1)}
        self.path.write_text(json.dumps(self.stages, indent=1))
        print(f"[{name}] {self.stages[name]}", flush=True)
        return out


def every(n, label):
    def progress(done, total):
        if done % n == 0 or done == total:
            print(f"  {label} {done}/{total}", flush=True)

    return progress


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings; results go to .cache/toyworld-quick only")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is best on a busy machine)")
    ap.add_argument("--unet-steps", type=int, default=None, help="override the UNet training steps")
    ap.add_argument("--fresh", action="store_true", help="ignore cached stages")
    ap.add_argument("--concepts", action="store_true", help="train the personal concepts (needs the base model)")
    ap.add_argument("--names", default=None, help="with --concepts: a comma-separated part of them (parallel runs)")
    ap.add_argument(
        "--kinds", default="orthogonal,attention,plain", help="with --concepts: comma-separated kinds of concept"
    )
    args = ap.parse_args(argv)
    if args.concepts:
        return train_concepts(args)

    import torch

    import comfy_host

    comfy_host.boot(load_nodes=False)
    import comfy.sd

    from omg_core.toyworld import base_model as B
    from omg_core.toyworld import checkpoint as CK
    from omg_core.toyworld import detector as D
    from omg_core.toyworld import generate as G
    from omg_core.toyworld import scenes as S
    from omg_core.toyworld.tiny_checkpoints import SD15_UNET, build_unet_state

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    settings = B.BaseTrainSettings(threads=args.threads)
    det_steps, det_examples = 1500, 8000
    if args.quick:
        settings = dataclasses.replace(
            settings,
            taesd_steps=20,
            n_scenes=256,
            unet_steps=20,
            unet_batch=8,
            compose_scenes=64,
            compose_rounds=((4, 1e-4), (4, 1e-4)),
        )
        det_steps, det_examples = 50, 500
    if args.unet_steps:
        settings = dataclasses.replace(settings, unet_steps=args.unet_steps)
    work = REPO / ".cache" / ("toyworld-quick" if args.quick else "toyworld")
    out_dir = work / "assets" if args.quick else CK.ASSET_DIR
    work.mkdir(parents=True, exist_ok=True)
    clock = Clock(work / "timings.json")
    if args.fresh:
        clock.stages.clear()
    print(f"settings: {dataclasses.asdict(settings)}", flush=True)

    # 1-3: autoencoder, detector, UNet. The UNet trains in stages — the 64-px one, then the
    # composition rounds — and each stage's result (UNet + TAESD, the shipped format) is cached.
    # A run trains only the stages after the last cached one, each starting from its predecessor's
    # file (so a resumed run starts every stage from the weights an uninterrupted one does), and
    # reads the autoencoder from a cached stage instead of retraining it.
    stage_files = [work / "unet-64.safetensors"] + [
        work / f"unet-compose-{i}.safetensors" for i in range(1, len(settings.compose_rounds) + 1)
    ]
    done = 0 if args.fresh else max((i + 1 for i, f in enumerate(stage_files) if f.exists()), default=0)
    taesd_file = work / "taesd.pt"
    if done:
        taesd = B.new_taesd(settings.seed)
        taesd_stored = CK.load_weights(stage_files[done - 1])[1]
        taesd.load_state_dict({k: v.float() for k, v in taesd_stored.items() if k.startswith("taesd_")}, strict=False)
        taesd.eval()
    elif taesd_file.exists() and not args.fresh:
        taesd = B.new_taesd(settings.seed)
        taesd.load_state_dict(torch.load(taesd_file))
        taesd.eval()
    else:
        taesd = clock.run("taesd", B.train_taesd, settings, every(100, "taesd step"))
        torch.save(taesd.state_dict(), taesd_file)

    def degrade(x):
        return B.roundtrip(taesd, x)

    # 2. detector (renders, half of them through the autoencoder)
    det_file = out_dir / "detector.safetensors"
    if det_file.exists() and not args.fresh:
        detector = D.load_detector(det_file)
    else:
        net = clock.run(
            "detector",
            D.train_detector,
            steps=det_steps,
            n_examples=det_examples,
            degrade=degrade,
            progress=every(250, "detector step"),
        )
        detector = D.Detector(net)
        D.save_detector(detector, det_file)
    det_raw = D.evaluate(detector, n=1050 if not args.quick else 105)
    det_rt = D.evaluate(detector, n=1050 if not args.quick else 105, degrade=degrade)
    print(
        f"detector accuracy on held-out renders: {det_raw.accuracy:.3f}, through the autoencoder: {det_rt.accuracy:.3f}"
    )

    # 3. UNet, on the checkpoint as ComfyUI loads it
    clip_state = CK.build_text_encoder(settings.clip_seed)
    reference = CK.probe_text_encoder(clip_state)
    pool = S.base_caption_pool(settings.seed)
    captions = [S.caption(e) for e in pool] + [S.EMPTY_CAPTION, ""]
    captions_file = work / "captions.pt"
    cached = torch.load(captions_file) if captions_file.exists() and not args.fresh else None

    def load(unet_state):
        from safetensors.torch import save_file

        path = work / "init.safetensors"
        state = CK.checkpoint_state(unet_state, B.taesd_state(taesd), clip_state)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:2]

    def start(i):
        """The model stage i trains from: the previous stage's file, or the seeded initial UNet."""
        if i:
            return load(CK.load_weights(stage_files[i - 1])[0])
        return load(
            {k.removeprefix("model.diffusion_model."): v for k, v in build_unet_state(SD15_UNET, settings.seed).items()}
        )

    def latents(name, fn, key):
        """A stage's latents, cached beside the stages under the settings that decide them."""
        path = work / f"{name.replace(' ', '-')}.pt"
        stored = torch.load(path) if path.exists() and not args.fresh else None
        if stored is not None and stored["key"] == key:
            return stored["latents"], stored["index"]
        out = clock.run(name, fn, taesd, settings, pool)
        torch.save({"key": key, "latents": out[0], "index": out[1]}, path)
        return out

    stages = [("unet", settings.unet_stage(), f"unet-{settings.unet_steps}.resume.pt")] + [
        (f"unet composition {i}", stage, f"unet-compose-{i}.resume.pt")
        for i, stage in enumerate(settings.compose_stages(), start=1)
    ]
    meta = {"settings": json.dumps(dataclasses.asdict(settings))}
    small = large = None  # each data set read (or encoded) once, by the first stage that needs it
    for i in range(done, len(stages)):
        name, stage, resume_name = stages[i]
        model, clip = start(i)
        if cached is None or cached["captions"] != captions or cached["clip_probe"] != reference:
            cached = {"captions": captions, "clip_probe": reference}
            cached["conds"] = clock.run("captions", B.encode_captions, clip, captions)
            torch.save(cached, captions_file)
        conds, uncond = cached["conds"][:-1], cached["conds"][-1:]  # conds[len(pool)]: the empty scene
        if small is None:
            small = latents("latents", B.encode_scenes, [settings.seed, settings.n_scenes, captions])
        data = [small]
        if i:  # 3b. at the composition size, every k-th batch a 64-px one (see omg_core.toyworld.base_model)
            if large is None:
                key = [settings.seed, settings.compose_scenes, captions]
                large = latents("composition latents", B.encode_composition_scenes, key)
            data = [large, small]
        print(f"{name}: {', '.join(str(tuple(d[0].shape)) for d in data)} latents, {len(pool)} captions", flush=True)
        unet = clock.run(
            name,
            B.train_unet,
            model,
            data,
            conds,
            uncond,
            settings,
            stage,
            log=lambda m: print(" ", m, flush=True),
            resume_path=work / resume_name,
        )
        CK.save_weights(unet, B.taesd_state(taesd), stage_files[i], meta)
        del model, clip

    # 4. ship: quantised weights + manifest, then assemble and measure through ComfyUI
    weights_file = out_dir / "base_weights.safetensors"
    shutil.copyfile(stage_files[-1], weights_file)
    ckpt = CK.write_checkpoint(
        work / "toyworld.safetensors", *CK.load_weights(weights_file)[:2], settings.clip_seed, reference
    )
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True, output_clip=True)
    accuracy, mean_acc = {}, {}
    for size in (S.IMAGE_SIZE, S.COMPOSITION_SIZE):
        accuracy[size] = clock.run(
            f"prompt accuracy {size} px",
            G.prompt_accuracy,
            model,
            clip,
            vae,
            detector,
            seeds=2 if args.quick else 8,
            size=size,
        )
        mean_acc[size] = sum(accuracy[size].values()) / len(accuracy[size])
        print(f"prompt accuracy at {size} px (detector names the prompted object): {mean_acc[size]:.3f}")
    print(json.dumps(accuracy, indent=1))
    total = {
        "wall_s": round(sum(s["wall_s"] for s in clock.stages.values()), 1),
        "cpu_s": round(sum(s["cpu_s"] for s in clock.stages.values()), 1),
    }
    manifest = {
        "clip_seed": settings.clip_seed,
        "clip_probe": reference,
        "clip_probe_digest": CK.probe_digest(reference),
        "settings": dataclasses.asdict(settings),
        "timings": {**clock.stages, "total": total},
        "detector_accuracy": {"renders": det_raw.accuracy, "autoencoded_renders": det_rt.accuracy, "n": det_raw.n},
        "prompt_accuracy": {
            "mean": mean_acc[S.IMAGE_SIZE],
            "per_object": accuracy[S.IMAGE_SIZE],
            "seeds_per_object": 2 if args.quick else 8,
            f"at_{S.COMPOSITION_SIZE}_px": {
                "mean": mean_acc[S.COMPOSITION_SIZE],
                "per_object": accuracy[S.COMPOSITION_SIZE],
            },
        },
        "sampler": dataclasses.asdict(G.SamplerSettings()),
        "torch": torch.__version__,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {out_dir}; total {total}")
    return 0


def train_concepts(args) -> int:
    """Both versions of every personal concept on the shipped base model, then the external formats."""
    import torch

    import comfy_host

    comfy_host.boot(load_nodes=False)
    import comfy.sd

    from omg_core.toyworld import checkpoint as CK
    from omg_core.toyworld import concepts as C
    from omg_core.toyworld import scenes as S

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    settings = C.ConceptTrainSettings()
    directory = C.CONCEPT_DIR
    if args.quick:
        settings = dataclasses.replace(settings, steps=3, batch_size=1, images=2)
        directory = REPO / ".cache" / "toyworld-quick" / "concepts"
    # bfloat16 weights make the trainer compute in bf16: ~3x faster on CPUs with bf16 units
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(CK.toyworld_checkpoint()), model_options={"dtype": torch.bfloat16}
    )
    w, c = time.time(), time.process_time()
    names = tuple(n.strip() for n in (args.names or ",".join(S.PERSONAL_OBJECTS)).split(",") if n.strip())
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if set(names) - set(S.PERSONAL_OBJECTS) or set(kinds) - set(C.KINDS):
        raise SystemExit(f"--names from {', '.join(S.PERSONAL_OBJECTS)}; --kinds from {', '.join(C.KINDS)}")
    from benchmarks.box_shapes import choose_steps
    from omg_core.toyworld.detector import load_detector

    detector = load_detector()

    def choose(name, kind, files):
        steps, reading = choose_steps(model, clip, vae, detector, name, files, seeds=2 if args.quick else 8)
        print(f"{name} ({kind}): alone in the box shapes {reading['hits']} of {reading['of']}; keeps {steps} steps")
        return steps, reading

    report = C.train_personal_concepts(
        model,
        clip,
        vae,
        directory,
        settings,
        names,
        log=lambda m: print(m, flush=True),
        kinds=kinds,
        choose=choose,
        candidate_dir=(REPO / ".cache" / ("toyworld-quick" if args.quick else "toyworld") / "concept-candidates"),
    )
    if set(names) != set(S.PERSONAL_OBJECTS) or set(kinds) != set(C.KINDS):
        print(
            f"trained {', '.join(kinds)} {', '.join(names)}; run without --names/--kinds to finish and write the formats"
        )
        return 0
    timing = {"wall_s": round(time.time() - w, 1), "cpu_s": round(time.process_time() - c, 1)}
    # a resumed run reports only its own time; each file's header keeps what training it took
    timing["training_s_all_concepts"] = round(sum(r["seconds"] for r in report.values()), 1)
    formats = C.write_external_formats(model, clip, directory)
    print(f"concepts: {timing}; external formats: {', '.join(str(p.name) for p in formats.values())}")
    if not args.quick:
        manifest = json.loads(CK.MANIFEST.read_text())
        manifest["concepts"] = {
            "settings": dataclasses.asdict(settings),
            "kinds": {kind: dataclasses.asdict(k) for kind, k in C.KINDS.items()},
            "timing": timing,
            "runs": report,
        }
        CK.MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
