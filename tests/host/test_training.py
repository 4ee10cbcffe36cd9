"""Concept training on ComfyUI's real (tiny) SD1.5 model: it learns, it touches only
what it should, concepts in different slots are orthogonal, it resumes exactly, and
what it saves loads with stock ComfyUI and with the pack's own loader."""

from __future__ import annotations

import math

import pytest
import torch

from omg_core.model.basis import basis_rows
from omg_core.pipelines.train import TrainConfig, train_concept, train_to_file

STEPS = 6
LR = 3e-2
SIZE = 32


def _images(kind: str, n: int = 2) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    out = []
    for i in range(n):
        shift = 0.08 * i
        if kind == "disc":
            m = (((xx - 0.5 - shift) ** 2 + (yy - 0.5) ** 2) < 0.1).float()
            out.append(torch.stack([m, 0.1 * xx, 1 - m], -1))
        else:
            m = (((xx - 0.5 + shift).abs() < 0.25) & ((yy - 0.5).abs() < 0.25)).float()
            out.append(torch.stack([1 - m, m, 0.5 * m * yy], -1))
    return torch.stack(out)


CONCEPTS = {"a": ("disc", "omgcat", "cat", 0, 1), "b": ("square", "omgdog", "dog", 1, 2)}


def _config(which: str, down: str = "basis", **kw) -> TrainConfig:
    _, trigger, cls, slot, seed = CONCEPTS[which]
    base = dict(trigger=trigger, class_word=cls, steps=STEPS, learning_rate=LR, rank=4, slot=slot, seed=seed, down=down)
    return TrainConfig(**{**base, **kw})


pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


@pytest.fixture(scope="module")
def model_before(sd15):
    return _weights(sd15[0]), dict(sd15[0].patches), dict(sd15[0].object_patches), dict(sd15[0].weight_wrapper_patches)


@pytest.fixture(scope="module")
def trained(sd15, model_before):
    """Two concepts in slots 0 and 1 of one basis, and the same two as free LoRAs."""
    model, clip, vae = sd15
    runs = {}
    for down in ("basis", "free"):
        for which, (kind, *_rest) in CONCEPTS.items():
            runs[down, which] = train_concept(model, clip, vae, _images(kind), _config(which, down))
    return runs


def test_training_lowers_the_loss_on_a_fixed_probe(trained):
    for which in CONCEPTS:
        r = trained["basis", which]
        assert len(r.losses) == STEPS and all(math.isfinite(x) for x in r.losses)
        assert r.probe_loss_end < r.probe_loss_start, (which, r.probe_loss_start, r.probe_loss_end)


def test_only_the_up_projections_are_trained_and_the_model_is_untouched(sd15, trained, model_before):
    model = sd15[0]
    weights, patches, object_patches, wrappers = model_before
    after = _weights(model)
    assert after.keys() == weights.keys()
    assert all(torch.equal(after[k], weights[k]) for k in weights), "training changed the input model's weights"
    assert model.patches == patches and model.object_patches == object_patches
    assert model.weight_wrapper_patches == wrappers
    assert not any(m._forward_hooks for m in model.model.modules()), "a training hook was left on the model"

    concept = trained["basis", "a"].concept
    blocks = sum(1 for n, _ in model.model.diffusion_model.named_modules() if n.endswith("attn2"))
    assert len(concept.unet) == 2 * blocks
    assert all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in concept.unet)
    assert not concept.text_encoder and not concept.embeddings
    for key, u in concept.unet.items():
        assert torch.equal(u.down, basis_rows(0, 0, 4, u.in_features)), f"{key}: down-projection was trained"
        assert u.up.abs().max() > 0, f"{key}: up-projection did not move"
    assert concept.metadata["omg_basis_seed"] == "0" and concept.metadata["omg_basis_slot"] == "0"
    free = trained["free", "a"].concept
    assert any(not torch.equal(u.down, basis_rows(0, 0, 4, u.in_features)) for u in free.unet.values())
    assert "omg_basis_slot" not in free.metadata


def _own_rows(clip, prompt: str, other: str) -> tuple[torch.Tensor, list[int]]:
    """Text features of ``prompt`` at its own words: the tokens where it differs
    from ``other`` (the shared template and the padding are the same for both)."""
    ta, tb = clip.tokenize(prompt)["l"][0], clip.tokenize(other)["l"][0]
    end = next(i for i, t in enumerate(ta) if i > 0 and t[0] == 49407)
    rows = [i for i in range(1, end) if ta[i][0] != tb[i][0]]
    with torch.no_grad():
        feats = clip.encode_from_tokens(clip.tokenize(prompt))[0]
    return feats[rows].double(), rows


def _cross_talk(ci, cj, x) -> float:
    """‖ΔW_j X_i‖ / ‖ΔW_i X_i‖ over all of concept i's layers."""
    num = sum(float(cj.unet[k].apply(x).square().sum()) for k in ci.unet)
    den = sum(float(ci.unet[k].apply(x).square().sum()) for k in ci.unet)
    return math.sqrt(num / den)


def test_slots_give_exactly_orthogonal_down_projections_and_less_cross_talk_than_free_ones(sd15, trained):
    clip = sd15[1]
    a, b = trained["basis", "a"].concept, trained["basis", "b"].concept
    for key in a.unet:
        da, db = a.unet[key].down, b.unet[key].down
        assert torch.equal(db, basis_rows(0, 1, 4, db.shape[1]))
        exact_a, exact_b = (basis_rows(0, s, 4, da.shape[1], dtype=torch.float64) for s in (0, 1))
        assert (exact_a @ exact_b.T).abs().max() < 1e-12  # the basis itself
        assert (da.double() @ db.double().T).abs().max() < 1e-6  # its float32 rows, as stored
        # so the updates are orthogonal matrices: <ΔW_a, ΔW_b>_F = 0
        wa, wb = a.unet[key].dense().double(), b.unet[key].dense().double()
        assert abs(float((wa * wb).sum())) <= 1e-6 * float(wa.norm() * wb.norm())

    xa, rows_a = _own_rows(clip, "a photo of omgcat cat", "a photo of omgdog dog")
    xb, rows_b = _own_rows(clip, "a photo of omgdog dog", "a photo of omgcat cat")
    assert rows_a == rows_b and len(rows_a) >= 1

    def mutual(c1, c2) -> float:
        # geometric mean of both directions: independent of how large either update grew
        return math.sqrt(_cross_talk(c1, c2, xa) * _cross_talk(c2, c1, xb))

    basis = mutual(a, b)
    free = mutual(trained["free", "a"].concept, trained["free", "b"].concept)
    assert basis < free, f"cross-talk with basis slots {basis:.3f} is not below free LoRAs {free:.3f}"


def test_resumed_run_matches_the_uninterrupted_one(sd15, trained, tmp_path):
    model, clip, vae = sd15
    state = tmp_path / "a.state"

    class Stop(Exception):
        pass

    def stop_at_3(done, total):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        train_concept(model, clip, vae, _images("disc"), _config("a"), progress=stop_at_3, checkpoint_path=state)
    assert state.exists()
    resumed = train_concept(model, clip, vae, _images("disc"), _config("a"), checkpoint_path=state)
    assert resumed.resumed_from == 3 and not state.exists()
    whole = trained["basis", "a"]
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5, abs=1e-6)
    for key, u in whole.concept.unet.items():
        assert torch.allclose(resumed.concept.unet[key].up, u.up, rtol=1e-5, atol=1e-7), key


def test_snapshots_are_the_shorter_runs_and_leave_the_run_unchanged(sd15, trained):
    """One run to the longest count hands over each shorter one, which is what the step choice
    compares: a snapshot after step 3 is a 3-step run, and taking it changes nothing after."""
    model, clip, vae = sd15
    taken = {}
    whole = train_concept(model, clip, vae, _images("disc"), _config("a"), snapshots=(3,), on_snapshot=taken.setdefault)
    short = train_concept(model, clip, vae, _images("disc"), _config("a", steps=3))
    assert set(taken) == {3} and taken[3].metadata["omg_train_steps"] == "3"
    assert whole.losses == pytest.approx(trained["basis", "a"].losses, rel=1e-5, abs=1e-6)
    for key, u in short.concept.unet.items():
        assert torch.allclose(taken[3].unet[key].up, u.up, rtol=1e-5, atol=1e-7), key
        other = trained["basis", "a"].concept.unet[key].up
        assert torch.allclose(whole.concept.unet[key].up, other, rtol=1e-5, atol=1e-7), key
    with pytest.raises(ValueError, match=r"snapshot steps \[6\] are outside 1..5"):
        train_concept(model, clip, vae, _images("disc"), _config("a"), snapshots=(6,), on_snapshot=taken.setdefault)


def test_a_state_from_other_settings_is_not_resumed(sd15, tmp_path):
    model, clip, vae = sd15

    def stop(done, total):
        raise KeyboardInterrupt

    state = tmp_path / "s.state"
    with pytest.raises(KeyboardInterrupt):
        train_concept(model, clip, vae, _images("disc"), _config("a", steps=2), progress=stop, checkpoint_path=state)
    other = train_concept(model, clip, vae, _images("disc"), _config("a", steps=1, seed=9), checkpoint_path=state)
    assert other.resumed_from == 0


def test_saved_concept_loads_with_stock_lora_loader_and_the_packs_loader(sd15, trained, tmp_path):
    import comfy.lora
    import comfy.sd
    import comfy.utils

    from omg_core.bridge.binding import load_concept
    from omg_core.pipelines.train import save_concept

    model, clip, _ = sd15
    result = trained["basis", "a"]
    path = tmp_path / "omgcat.safetensors"
    save_concept(result, path)

    lora = comfy.utils.load_torch_file(str(path), safe_load=True)
    patched, _ = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
    assert set(patched.patches) - set(model.patches) == set(result.concept.unet)
    sd = model.model.state_dict()
    for key, u in result.concept.unet.items():
        weight = sd[key].detach().float().clone()
        effective = comfy.lora.calculate_weight(patched.patches[key], weight.clone(), key)
        assert torch.allclose(effective, weight + u.dense(), atol=1e-6), key

    loaded = load_concept(str(path), model, clip)
    assert loaded.triggers == ("omgcat",) and loaded.family == "sd15"
    assert set(loaded.unet) == set(result.concept.unet)
    for key, u in result.concept.unet.items():
        assert torch.allclose(loaded.unet[key].dense(), u.dense(), atol=1e-6), key


def test_learned_trigger_embedding_starts_at_the_class_word_and_moves(sd15, tmp_path):
    import comfy.utils

    model, clip, vae = sd15
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    table_before = table.detach().clone()
    cat_ids = [t[0] for t in clip.tokenize("cat", return_word_ids=True)["l"][0] if t[2] != 0]
    init = table_before[cat_ids].float().mean(0)

    # What the host itself put on the CLIP (0.33 adds a compute-dtype object patch at load).
    clip_patches_before = dict(clip.patcher.patches), dict(clip.patcher.object_patches)
    path = tmp_path / "emb.safetensors"
    config = _config("a", steps=2, learn_embedding=True, embedding_lr=1e-3)
    result = train_to_file(model, clip, vae, _images("disc"), config, path)
    (emb,) = result.concept.embeddings
    assert emb.token == "omgcat" and emb.encoder == "clip_l" and emb.vectors.shape == (1, 768)
    moved = float((emb.vectors[0] - init).norm())
    assert 0 < moved < float(init.norm()), moved
    assert torch.equal(table, table_before), "the input CLIP's token table changed"
    assert (dict(clip.patcher.patches), dict(clip.patcher.object_patches)) == clip_patches_before
    saved = comfy.utils.load_torch_file(str(path), safe_load=True)
    assert torch.equal(saved["bundle_emb.omgcat.clip_l"], emb.vectors)


@pytest.mark.parametrize("count", [1, 3])
def test_a_trained_trigger_of_several_vectors_encodes_at_inference_as_it_trained(sd15, count):
    """The trainer lays the trigger's vectors into the prompt itself; a loaded concept's prompt
    goes through ComfyUI's textual-inversion path. Both must give the same encoding, or the
    concept is used with a text it was never trained on."""
    from omg_core.bridge.train_inputs import TextConditioning
    from omg_core.bridge.trigger_tokens import clip_with_embeddings

    model, clip, vae = sd15
    config = _config("a", steps=2, learn_embedding=True, embedding_vectors=count, embedding_lr=1e-2)
    result = train_concept(model, clip, vae, _images("disc"), config)
    (emb,) = result.concept.embeddings
    assert emb.vectors.shape == (count, 768)
    assert result.concept.metadata["omg_train_embedding_vectors"] == str(count)
    if count > 1:  # one start, different positions: the vectors part ways
        assert float((emb.vectors[0] - emb.vectors[1]).norm()) > 0

    prompt = "a photo of omgcat on a table"
    text = TextConditioning(
        clip, model.model, prompt, "a photo of cat", "omgcat", "cat", True, SIZE, SIZE, "cpu", count
    )
    with torch.no_grad():
        text.vectors["clip_l"].copy_(emb.vectors)
        trained = text.instance()["c_crossattn"]
    loaded = clip_with_embeddings(clip, result.concept.embeddings)
    inferred = loaded.encode_from_tokens(loaded.tokenize(prompt))
    assert trained.shape == inferred.shape == (1, 77, 768)
    # one text encoder, the same tokens and vectors: equal up to float rounding of the same ops
    assert torch.allclose(trained.float().cpu(), inferred.float().cpu(), atol=1e-5), (trained - inferred).abs().max()
    moved = loaded.encode_from_tokens(loaded.tokenize("a photo of cat on a table"))
    assert not torch.allclose(moved, inferred, atol=1e-3), "the trigger's vectors changed nothing"


def test_trigger_vectors_that_do_not_fit_the_prompt_are_refused(sd15):
    from omg_core.bridge.train_inputs import TextConditioning

    model, clip, _ = sd15
    prompt = "omgcat " + " ".join(["red"] * 74)
    with pytest.raises(ValueError, match="leaves no room for 3 trigger vectors"):
        TextConditioning(clip, model.model, prompt, "a cat", "omgcat", "cat", True, SIZE, SIZE, "cpu", 3)
    with pytest.raises(ValueError, match="learn_embedding is off"):
        _config("a", embedding_vectors=2).validate()
    with pytest.raises(ValueError, match="embedding_vectors must be 1 to 8"):
        _config("a", embedding_vectors=9, learn_embedding=True).validate()


def test_all_attention_target_adapts_every_attention_projection(sd15):
    model, clip, vae = sd15
    result = train_concept(model, clip, vae, _images("disc", 1), _config("a", steps=1, target="attention", slot=3))
    names = {k.rsplit(".", 2)[-2] if "to_out" not in k else "to_out" for k in result.concept.unet}
    assert names == {"to_q", "to_k", "to_v", "to_out"}
    assert any(".attn1." in k for k in result.concept.unet) and any(".attn2." in k for k in result.concept.unet)
    for u in result.concept.unet.values():
        assert torch.equal(u.down, basis_rows(0, 3, 4, u.in_features))


def test_prior_preservation_adds_the_class_prompt_loss(sd15):
    model, clip, vae = sd15
    config = _config("a", steps=2, batch_size=1)
    plain = train_concept(model, clip, vae, _images("disc"), config)
    with_prior = train_concept(model, clip, vae, _images("disc"), config, prior_images=_images("square", 3))
    # same instance draws (same seed), plus a positive class-image term
    assert all(p > q for p, q in zip(with_prior.losses, plain.losses))
    with pytest.raises(ValueError, match="prior-preservation IMAGE batch is empty"):
        train_concept(model, clip, vae, _images("disc"), config, prior_images=torch.zeros(0, SIZE, SIZE, 3))


@pytest.mark.parametrize(
    "kw, images, message",
    [
        ({"slot": 192}, "disc", r"slot 192 is out of range.*0 to 191"),
        ({"rank": 400}, "disc", r"rank 400 is too large.*at most 320"),
        ({}, "empty", "IMAGE batch is empty"),
    ],
)
def test_bad_inputs_are_refused_before_training(sd15, kw, images, message):
    model, clip, vae = sd15
    pixels = torch.zeros(0, SIZE, SIZE, 3) if images == "empty" else _images(images)
    with pytest.raises(ValueError, match=message):
        train_concept(model, clip, vae, pixels, _config("a", **kw))


class _SdxlShapedClip:
    """Seeded random SDXL conditioning per prompt (a real CLIP-G is ~700 M parameters)."""

    def tokenize(self, text, return_word_ids=False):
        return {"g": [[(sum(map(ord, text)) % 10000, 1.0)]], "l": [[(sum(map(ord, text)) % 10000, 1.0)]]}

    def encode_from_tokens(self, tokens, return_pooled=False):
        from omg_core.toyworld.tiny_checkpoints import sdxl_conditioning

        ((cond, extra),) = sdxl_conditioning(seed=tokens["g"][0][0][0])
        return cond, extra["pooled_output"]


class _PoolingVae:
    def encode(self, pixels):
        x = pixels.movedim(-1, 1)
        return torch.nn.functional.avg_pool2d(torch.cat([x, x.mean(1, keepdim=True)], 1), 8)


def test_sdxl_concept_trains_through_sdxl_conditioning(sdxl_inprocess):
    """SDXL's pooled/size vector and 2048-wide context reach the UNet; the k/v layers read 2048 features."""
    weights = _weights(sdxl_inprocess)
    result = train_concept(sdxl_inprocess, _SdxlShapedClip(), _PoolingVae(), _images("disc"), _config("a", steps=2))
    assert result.concept.family == "sdxl" and result.concept.unet
    for u in result.concept.unet.values():
        assert u.in_features == 2048 and torch.equal(u.down, basis_rows(0, 0, 4, 2048))
        assert u.up.abs().max() > 0
    assert all(torch.equal(v, weights[k]) for k, v in _weights(sdxl_inprocess).items())


def test_parameter_report_uses_the_real_sd15_and_sdxl_unets(comfy):
    from omg_core.bridge.train_report import format_parameter_report, parameter_report

    sd15, sdxl = parameter_report(rank=4)
    assert (sd15.blocks, sdxl.blocks) == (16, 70)
    assert (sd15.layers_kv, sd15.layers_attention) == (32, 128)
    # 16 blocks at widths 320/640/1280: sum of k/v output widths is 2 * 12480
    assert sd15.kv_basis == 4 * 2 * 12480 and sd15.kv_free == sd15.kv_basis + 4 * 768 * 32
    assert sdxl.kv_free == sdxl.kv_basis + 4 * 2048 * 140
    assert sd15.attention_basis == 4 * sd15.kv_basis
    assert "sdxl" in format_parameter_report([sd15, sdxl])


def _node_prompt(**inputs) -> dict:
    train = {
        "model": ["1", 0],
        "clip": ["1", 1],
        "vae": ["1", 2],
        "images": ["2", 0],
        "trigger": "omgnode",
        "class_word": "ball",
        "steps": 2,
        "learning_rate": 1e-3,
        "rank": 4,
        "basis_seed": 7,
        "slot": 5,
        "seed": 0,
        "target": "cross-attn k/v",
        "learn_embedding": True,
        "filename": "omg-test/node-trained",
    }
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "omg-tiny-sd15.safetensors"}},
        "2": {
            "class_type": "EmptyImage",
            "inputs": {"width": SIZE, "height": SIZE, "batch_size": 2, "color": 0xCC3311},
        },
        "3": {"class_type": "OMGTrainConcept", "inputs": {**train, **inputs}},
    }


def test_train_node_saves_into_loras_through_comfyuis_executor(host):
    """Through the executor the checkpoint is loaded under inference mode, as for a user."""
    import os

    import folder_paths

    from omg_core.formats.native import read_native_concept

    host.run(_node_prompt(crop=0.25, embedding_vectors=2))
    name, curve = host.node_outputs("3")[:2]
    assert name[0] == "omg-test/node-trained.safetensors"
    assert curve[0].shape[0] == 1 and curve[0].shape[-1] == 3
    path = os.path.join(folder_paths.get_folder_paths("loras")[0], "omg-test", "node-trained.safetensors")
    concept = read_native_concept(path)
    assert concept.triggers == ("omgnode",) and concept.metadata["omg_basis_slot"] == "5"
    assert concept.metadata["omg_train_crop"] == "0.25"
    assert concept.embeddings and concept.embeddings[0].token == "omgnode"
    assert concept.embeddings[0].vectors.shape == (2, 768) and concept.metadata["omg_train_embedding_vectors"] == "2"
    for u in concept.unet.values():
        assert torch.equal(u.down, basis_rows(7, 5, 4, u.in_features))


def test_train_node_saves_every_n_steps_beside_the_file_and_checks_those_names_too(host):
    import os

    import folder_paths

    import comfy_host
    from omg_core.formats.native import read_native_concept

    folder = os.path.join(folder_paths.get_folder_paths("loras")[0], "omg-test")
    host.run(_node_prompt(filename="omg-test/snaps", steps=3, save_every=1, learn_embedding=False))
    for step in (1, 2):
        concept = read_native_concept(os.path.join(folder, f"snaps-{step}steps.safetensors"))
        assert concept.metadata["omg_train_steps"] == str(step) and concept.metadata["omg_source_format"] == "trained"
    assert not os.path.exists(os.path.join(folder, "snaps-3steps.safetensors"))  # the last step is the file itself
    with open(os.path.join(folder, "mine-1steps.safetensors"), "wb") as f:
        f.write(b"a file someone made")
    with pytest.raises(comfy_host.PromptFailed, match="prompt invalid.*mine-1steps.safetensors already exists"):
        host.run(_node_prompt(filename="omg-test/mine", steps=2, save_every=1, learn_embedding=False))
    assert not os.path.exists(os.path.join(folder, "mine.safetensors"))


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"filename": "../outside"}, "must be a file name inside the loras folder"),
        ({"filename": "omg-test-cat"}, "already exists: choose another output filename, or turn overwrite on"),
        ({"filename": "omg-test-cat", "overwrite": True}, "already exists and is not a concept trained by this node"),
        ({"learning_rate": float("nan")}, "learning_rate is nan: give it a finite number"),
        ({"crop": 0.95}, "crop 0.95 is above its maximum 0.9"),
        ({"embedding_vectors": 9}, "embedding_vectors 9 is above its maximum 8"),
        ({"embedding_vectors": 2}, "embedding_vectors is 2 but learn_embedding is off"),
        ({"slot": 4000, "filename": "omg-test/slot-4000"}, "slot 4000 is out of range"),
    ],
)
def test_train_node_reports_bad_inputs_clearly(host, inputs, message):
    import comfy_host

    with pytest.raises(comfy_host.PromptFailed, match=message):
        host.run(_node_prompt(steps=1, learn_embedding=False, **inputs))


def test_a_second_run_never_replaces_the_first_without_overwrite(host):
    """Queue-time refusal (nothing trained, nothing written); with overwrite on the earlier concept is replaced."""
    import hashlib
    import os

    import folder_paths

    import comfy_host

    path = os.path.join(folder_paths.get_folder_paths("loras")[0], "omg-test", "twice.safetensors")
    host.run(_node_prompt(filename="omg-test/twice", steps=1, learn_embedding=False))
    first = hashlib.sha256(open(path, "rb").read()).hexdigest()
    with pytest.raises(comfy_host.PromptFailed, match="prompt invalid.*twice.safetensors already exists"):
        host.run(_node_prompt(filename="omg-test/twice", steps=1, learn_embedding=False, seed=1))
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == first
    host.run(_node_prompt(filename="omg-test/twice", steps=1, learn_embedding=False, seed=1, overwrite=True))
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() != first


def test_command_line_trains_from_an_image_folder(comfy, sd15_checkpoint, tmp_path):
    import numpy as np
    import train_concept as cli
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate(_images("disc")):
        Image.fromarray((img.numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "cli.safetensors"
    args = ["--checkpoint", str(sd15_checkpoint), "--images", str(folder), "--trigger", "omgcli", "--class", "cat"]
    args += ["--out", str(out), "--steps", "2", "--resolution", str(SIZE), "--slot", "2", "--cpu"]
    assert cli.main(args) == 0
    from omg_core.formats.native import read_native_concept

    concept = read_native_concept(out)
    assert concept.triggers == ("omgcli",) and concept.metadata["omg_basis_slot"] == "2"
    with pytest.raises(SystemExit, match="cli.safetensors already exists: choose another output filename"):
        cli.main(args)
    assert cli.main([*args, "--overwrite"]) == 0
    out.unlink()
    with pytest.raises(SystemExit, match="no images"):
        cli.main([*args[:3], str(tmp_path), *args[4:]])
