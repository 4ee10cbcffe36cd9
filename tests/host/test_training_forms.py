"""The trainer's svd and kronecker forms on ComfyUI's real (tiny) SD1.5: each
learns and keeps its shape, concepts of one form in different slots do not
cross-talk, each file loads with stock LoraLoader to the weights the pack's own
loader reads, runs resume exactly, a kronecker and an svd concept fuse
additively and exactly (and route), and OMG Prune Concept Rank prunes the svd one."""

from __future__ import annotations

import math

import pytest
import torch
from test_training import SIZE, _images

from omg_core.model.basis import basis_rows
from omg_core.model.concept import KroneckerUpdate, LowRankUpdate
from omg_core.model.forms import input_rows, slot_width
from omg_core.pipelines.train import TrainConfig, save_concept, train_concept

STEPS = 6
LR = 3e-2
RUNS = {
    ("kronecker", 0): ("disc", "omgcat", "cat", 1),
    ("kronecker", 1): ("square", "omgdog", "dog", 2),
    ("svd", 0): ("disc", "omgcat", "cat", 1),
    ("svd", 1): ("square", "omgdog", "dog", 2),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(form: str, slot: int, **kw) -> TrainConfig:
    _, trigger, cls, seed = RUNS[form, slot]
    base = dict(trigger=trigger, class_word=cls, steps=STEPS, learning_rate=LR, rank=4, slot=slot, seed=seed)
    return TrainConfig(**{**base, "form": form, **kw})


@pytest.fixture(scope="module")
def trained(sd15):
    model, clip, vae = sd15
    return {run: train_concept(model, clip, vae, _images(RUNS[run][0]), _config(*run)) for run in RUNS}


def _slot(form: str, slot: int, in_features: int) -> torch.Tensor:
    return basis_rows(0, slot, 4, slot_width(form, in_features))


def test_each_form_learns_and_keeps_its_shape(trained):
    for (form, slot), result in trained.items():
        assert all(math.isfinite(x) for x in result.losses) and len(result.losses) == STEPS
        assert result.probe_loss_end < result.probe_loss_start, (form, slot)
        concept = result.concept
        assert concept.metadata["omg_form"] == form and concept.metadata["omg_basis_slot"] == str(slot)
        assert all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in concept.unet)
        for key, u in concept.unet.items():
            own, other = _slot(form, slot, u.in_features), _slot(form, 1 - slot, u.in_features)
            if form == "kronecker":
                assert isinstance(u, KroneckerUpdate) and tuple(u.w1.shape) == (8, 8), key
                assert tuple(u.w2.shape) == (u.out_features // 8, u.in_features // 8), key
                # w2's rows lie in the slot: w2 = w2 Sᵀ S, and w2 S'ᵀ = 0 for the other slot
                torch.testing.assert_close(u.w2 @ own.T @ own, u.w2, rtol=0, atol=1e-6 * float(u.w2.abs().max()))
                assert float((u.w2 @ other.T).abs().max()) <= 1e-6 * float(u.w2.abs().max()), key
            else:
                assert isinstance(u, LowRankUpdate) and torch.equal(u.down, own), key
                gram = u.up.T @ u.up  # U·diag(σ): orthogonal columns
                off = gram - torch.diag(torch.diagonal(gram))
                assert float(off.abs().max()) <= 1e-5 * float(torch.diagonal(gram).max()), key
            assert float(u.frobenius_norm_sq()) > 0, key


@pytest.mark.parametrize("form", ["kronecker", "svd"])
def test_concepts_of_one_form_in_different_slots_do_not_cross_talk(trained, form):
    a, b = trained[form, 0].concept, trained[form, 1].concept
    for key in a.unet:
        ua, ub = a.unet[key], b.unet[key]
        for own, other, slot in ((ua, ub, 0), (ub, ua, 1)):
            basis = input_rows(form, _slot(form, slot, own.in_features).double(), own.in_features)
            x = torch.randn(8, basis.shape[0], generator=torch.Generator().manual_seed(slot), dtype=torch.float64)
            x = x @ basis
            assert float(other.apply(x).norm()) <= 1e-6 * float(own.apply(x).norm()), (key, slot)
        wa, wb = ua.dense(torch.float64), ub.dense(torch.float64)
        assert abs(float((wa * wb).sum())) <= 1e-6 * float(wa.norm() * wb.norm()), key


@pytest.mark.parametrize("form, adapter", [("kronecker", "LoKrAdapter"), ("svd", "LoRAAdapter")])
def test_saved_file_loads_with_stock_lora_loader_as_with_the_packs_loader(sd15, trained, tmp_path, form, adapter):
    import comfy.lora
    import comfy.sd
    import comfy.utils
    from safetensors import safe_open

    from omg_core.bridge.binding import load_concept

    model, clip, _ = sd15
    result = trained[form, 0]
    path = tmp_path / f"{form}.safetensors"
    save_concept(result, path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["omg_form"] == form and header["omg_basis_slot"] == "0"

    patched, _ = comfy.sd.load_lora_for_models(
        model, clip, comfy.utils.load_torch_file(str(path), safe_load=True), 1, 1
    )
    assert set(patched.patches) - set(model.patches) == set(result.concept.unet)
    loaded = load_concept(str(path), model, clip)
    assert loaded.triggers == ("omgcat",) and loaded.metadata["omg_form"] == form
    sd = model.model.state_dict()
    for key, u in result.concept.unet.items():
        (patch,) = [p[1] for p in patched.patches[key]]
        assert type(patch).__name__ == adapter, key
        weight = sd[key].detach().float().clone()
        stock = comfy.lora.calculate_weight(patched.patches[key], weight.clone(), key)
        assert type(loaded.unet[key]) is type(u), key
        torch.testing.assert_close(stock, weight + loaded.unet[key].dense(), rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.unet[key].dense(), u.dense(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("form", ["kronecker", "svd"])
def test_resumed_run_matches_the_uninterrupted_one(sd15, trained, tmp_path, form):
    model, clip, vae = sd15
    state = tmp_path / f"{form}.state"

    class Stop(Exception):
        pass

    def stop_at_3(done, total):
        if done == 3:
            raise Stop

    images = _images(RUNS[form, 0][0])
    with pytest.raises(Stop):
        train_concept(model, clip, vae, images, _config(form, 0), progress=stop_at_3, checkpoint_path=state)
    resumed = train_concept(model, clip, vae, images, _config(form, 0), checkpoint_path=state)
    whole = trained[form, 0]
    assert resumed.resumed_from == 3 and not state.exists()
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5, abs=1e-6)
    for key, u in whole.concept.unet.items():
        torch.testing.assert_close(resumed.concept.unet[key].dense(), u.dense(), rtol=1e-5, atol=1e-7)


@pytest.fixture
def base_weights(sd15):
    """The shared checkpoint's k/v weights; it is loaded unpatched again afterwards."""
    import comfy.model_management as mm

    model, clip, _ = sd15
    mm.load_models_gpu([model])
    yield {k: v.detach().clone().float() for k, v in model.model.state_dict().items() if ".attn2.to_" in k}
    mm.load_models_gpu([model, clip.patcher])


def test_kronecker_and_svd_concepts_fuse_additively_exactly_and_route(sd15, trained, base_weights):
    import comfy.model_management as mm

    from omg_core.bridge import attention_patch
    from omg_core.pipelines.fuse import fuse_concepts, fused_model

    model, clip, _ = sd15
    kron, svd = trained["kronecker", 0].concept, trained["svd", 1].concept.with_strength(0.5)
    result = fuse_concepts([kron, svd], "additive", 0.0)
    fused, _ = fused_model(model, None, [kron, svd], result)
    mm.load_models_gpu([fused])
    live = fused.model.state_dict()
    for key in kron.unet:
        assert sorted(type(u).__name__ for u in result.unet[key]) == ["KroneckerUpdate", "LowRankUpdate"], key
        want = base_weights[key] + kron.unet[key].dense() + 0.5 * svd.unet[key].dense()
        torch.testing.assert_close(live[key].float(), want, rtol=1e-5, atol=1e-6)
    mm.load_models_gpu([model])

    # routed: each region's k/v get its own concept's ΔW ctx, whatever the form
    layers = attention_patch.cross_attention_layers(model)
    prompts = [attention_patch.RegionPrompt(clip.encode_from_tokens(clip.tokenize(p))) for p in ("omgcat", "omgdog")]
    deltas = attention_patch.routed_deltas(layers, prompts, [kron, svd])
    for index, concept in enumerate((kron, svd)):
        for layer in layers:
            ctx = prompts[index].cond.float()
            dk, dv = deltas[(layer.path, index, attention_patch.COND)]
            for got, x in ((dk, "k"), (dv, "v")):
                update = concept.scaled_unet()[f"diffusion_model.{layer.path}.to_{x}.weight"]
                torch.testing.assert_close(got, ctx @ update.dense().T, rtol=1e-4, atol=1e-5)


def test_prune_node_prunes_an_svd_concept_and_refuses_a_bad_threshold(comfy, trained):
    node = comfy.NODE_CLASS_MAPPINGS["OMGPruneConceptRank"]
    svd = trained["svd", 0].concept
    out = node.execute([svd], 0.5)
    (pruned,), report = out.args
    assert f"omgcat (svd): rank {4 * len(svd.unet)} -> " in report and "‖ΔW‖ kept" in report
    assert pruned.unet.keys() == svd.unet.keys()
    for key, u in pruned.unet.items():
        assert 1 <= u.rank <= 4 and u.rank < 4 or torch.equal(u.down, svd.unet[key].down)
        # the kept rows are the concept's own basis rows, bit for bit: it stays in slot 0
        assert all(any(torch.equal(row, r) for r in svd.unet[key].down) for row in u.down), key
    assert node.validate_inputs(threshold=float("nan")) == "threshold is nan: give it a finite number"
    assert "above its maximum" in node.validate_inputs(threshold=1.5)


def test_train_node_and_command_line_take_the_form(host, comfy, sd15_checkpoint, tmp_path):
    import os

    import folder_paths
    import numpy as np
    import train_concept as cli
    from PIL import Image
    from test_training import _node_prompt

    from omg_core.formats.native import read_native_concept

    host.run(_node_prompt(filename="omg-test/node-kron", steps=1, learn_embedding=False, form="kronecker"))
    path = os.path.join(folder_paths.get_folder_paths("loras")[0], "omg-test", "node-kron.safetensors")
    concept = read_native_concept(path)
    assert concept.metadata["omg_form"] == "kronecker" and concept.metadata["omg_basis_slot"] == "5"
    assert all(isinstance(u, KroneckerUpdate) for u in concept.unet.values())

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate(_images("disc")):
        Image.fromarray((img.numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "cli-svd.safetensors"
    args = ["--checkpoint", str(sd15_checkpoint), "--images", str(folder), "--trigger", "omgcli", "--class", "cat"]
    args += ["--out", str(out), "--steps", "1", "--resolution", str(SIZE), "--form", "svd", "--cpu"]
    assert cli.main(args) == 0
    concept = read_native_concept(out)
    assert concept.metadata["omg_form"] == "svd"
    assert all(torch.equal(u.down, basis_rows(0, 0, 4, 768)) for u in concept.unet.values())


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"form": "svd", "target": "all attention"}, "prompt invalid.*the svd form trains the cross-attention k/v"),
        ({"form": "loha"}, "prompt invalid.*adapter form 'loha' is unknown"),
        ({"form": "kronecker", "slot": 24, "filename": "omg-test/kron-24"}, "slot 24 is out of range.*0 to 23"),
    ],
)
def test_train_node_refuses_a_form_it_cannot_train(host, inputs, message):
    from test_training import _node_prompt

    import comfy_host

    with pytest.raises(comfy_host.PromptFailed, match=message):
        host.run(_node_prompt(steps=1, learn_embedding=False, basis_seed=0, **{"rank": 4, **inputs}))
