"""The toy world in a real ComfyUI: the shipped model loads as SD1.5, draws what prompts name,
its personal concepts load from every format, and the composition benchmark runs end to end."""

from __future__ import annotations

import pytest
import torch

from omg_core.toyworld import scenes as S


@pytest.fixture(scope="module")
def toyworld(comfy):
    from omg_core.toyworld.generate import load_toyworld

    return load_toyworld()


@pytest.fixture(scope="module")
def detector():
    from omg_core.toyworld.detector import load_detector

    return load_detector()


@pytest.fixture(scope="module")
def bench_concepts(toyworld):
    from omg_core.toyworld.concepts import load_bench_concepts

    model, clip, _ = toyworld
    return load_bench_concepts(model, clip)


def test_checkpoint_loads_as_sd15_with_its_trained_taesd(toyworld):
    import comfy.supported_models
    from comfy.taesd.taesd import TAESD

    model, clip, vae = toyworld
    assert isinstance(model.model.model_config, comfy.supported_models.SD15)
    assert isinstance(vae.first_stage_model, TAESD)
    assert float(vae.first_stage_model.vae_scale) == pytest.approx(0.18215, rel=1e-3)  # stored in fp16
    cond = clip.encode_from_tokens(clip.tokenize("a red circle"))
    assert torch.isfinite(cond).all()


def test_comfyui_vae_round_trip_keeps_what_the_detector_sees(toyworld, detector):
    _, _, vae = toyworld
    objects = [S.PlacedObject("green triangle", (4, 8, 30, 34)), S.PlacedObject("kite", (34, 30, 62, 58))]
    image = torch.from_numpy(S.render(objects, "sky")).float()[None] / 255
    back = vae.decode(vae.encode(image)).reshape(1, 64, 64, 3).movedim(-1, 1).float()
    assert detector.classify(back[0], [(0, 0, 0.5, 0.6), (0.5, 0.4, 1, 1)]) == ["green triangle", "kite"]


def test_prompts_produce_the_objects_they_name(toyworld, detector):
    from omg_core.toyworld.generate import SamplerSettings, prompt_accuracy

    model, clip, vae = toyworld
    labels = ("red circle", "blue square", "green triangle", "yellow cross")
    acc = prompt_accuracy(model, clip, vae, detector, labels, seeds=2, settings=SamplerSettings(steps=12))
    assert sum(acc.values()) / len(acc) >= 0.75, acc


def test_a_personal_concept_is_drawn_only_when_loaded(toyworld, detector, bench_concepts):
    from omg_core.bridge.patching import apply_updates
    from omg_core.bridge.text_features import clip_with_trigger_embeddings
    from omg_core.toyworld.detector import CLASSES
    from omg_core.toyworld.generate import SamplerSettings, generate, locate

    model, clip, vae = toyworld
    house = next(c for c in bench_concepts["orthogonal"] if c.name == "house")
    loaded = (apply_updates(model, None, house.scaled_unet(), {})[0], clip_with_trigger_embeddings(clip, [house]))
    settings = SamplerSettings(steps=12)
    hits = {}
    for label, (m, c) in (("loaded", loaded), ("base", (model, clip))):
        images = generate(m, c, vae, "a house", seed=3, batch=4, settings=settings)
        hits[label] = int((detector.probabilities(images, locate(images)).argmax(-1) == CLASSES.index("house")).sum())
    assert hits["loaded"] >= 3 and hits["base"] == 0, hits


@pytest.mark.parametrize("fmt", ["kohya", "peft", "edlora", "custom_diffusion", "lokr"])
def test_external_format_files_hold_the_same_concept(toyworld, bench_concepts, fmt):
    from omg_core.bridge.binding import load_concept
    from omg_core.toyworld.concepts import EXTERNAL_FORMATS, external_file, external_trigger

    model, clip, _ = toyworld
    name = EXTERNAL_FORMATS[fmt]
    native = next(c for c in bench_concepts["orthogonal"] if c.name == name)
    loaded = load_concept(str(external_file(fmt)), model, clip, name=name)
    if fmt in ("kohya", "edlora", "custom_diffusion"):  # formats that carry their trigger word
        assert loaded.triggers == (external_trigger(fmt),)
    assert set(loaded.unet) == set(native.unet)
    (vector,) = [e.vectors.reshape(-1, 768).mean(0) for e in loaded.embeddings]
    assert torch.allclose(vector, native.embeddings[0].vectors.reshape(-1, 768).mean(0), atol=1e-6)
    for key, update in native.scaled_unet().items():
        want = update.dense()
        got = loaded.scaled_unet()[key].dense()
        assert (got - want).abs().max() <= 1e-4 * want.abs().max() + 1e-6, key


def test_composition_benchmark_runs_every_method_end_to_end(toyworld, detector, bench_concepts, tmp_path):
    from benchmarks.composition import METHOD_NAMES, METHODS, QUICK, Bench, format_table, grid_image

    model, clip, vae = toyworld
    result = Bench(model, clip, vae, detector, bench_concepts, QUICK).run()
    assert set(result.methods) == set(METHOD_NAMES)
    for r in result.methods.values():
        for n in QUICK.counts:
            assert r.success[n].n == QUICK.scenes_per_count and r.in_company[n].n == QUICK.scenes_per_count * n
            lo, hi = r.success[n].interval()
            assert 0 <= lo <= r.success[n].p <= hi <= 1
    for m in METHODS:
        # base-object methods load no concept, so there is no concept to see alone
        alone = len(S.PERSONAL_OBJECTS) * QUICK.alone_seeds if m.objects == "concepts" else 0
        assert result.methods[m.name].alone.n == alone
        if m.objects == "base":
            assert not set(result.methods[m.name].per_concept) & set(S.PERSONAL_OBJECTS)
    table = format_table(result)
    assert all(name in table for name in METHOD_NAMES)
    path = grid_image(result, tmp_path / "grid.png")
    assert path.stat().st_size > 1000


def test_composition_benchmark_runs_on_a_users_layouts_file(toyworld, tmp_path):
    """The command with --layouts: each layout is run (one naming its concepts), and the JSON keeps every count."""
    import json

    import torch

    from benchmarks import composition as bench_composition

    layouts = [
        [[0.0, 0.1, 0.45, 0.6], [0.55, 0.4, 1.0, 0.9]],
        [{"box": [0.1, 0.0, 0.5, 0.45], "concept": "kite"}, {"box": [0.5, 0.55, 0.95, 1.0], "concept": "house"}],
    ]
    (tmp_path / "layouts.json").write_text(json.dumps(layouts))
    threads = torch.get_num_threads()
    try:
        args = ["--quick", "--layouts", str(tmp_path / "layouts.json"), "--methods", "regional_routed_lc"]
        assert bench_composition.main([*args, "--out", str(tmp_path / "out")]) == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads((tmp_path / "out" / "composition.json").read_text())
    assert record["settings"]["layouts"] == layouts and record["settings"]["counts"] == [2]
    routed = record["methods"]["regional_routed_lc"]
    per = routed["per_count"]["2"]
    assert per["success"]["n"] == 2 and sum(o["k"] for o in per["outcomes"].values()) == 4  # every box has one
    assert routed["cost"] > 0 and set(routed["per_concept"]) >= {"kite", "house"}
    for concept, rate in routed["per_concept"].items():  # every box of a concept was read as something
        read = routed["read_as"][concept]
        assert sum(read.values()) == rate["n"] and read.get(concept, 0) >= rate["k"]
    table = (tmp_path / "out" / "composition.md").read_text()
    assert "What each box held" in table and "were read as" in table
