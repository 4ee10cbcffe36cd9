"""The fusion nodes in a real ComfyUI: clones carry the fused weights, the saved
LoRA loads with the stock LoraLoader and reproduces them."""

import shutil
from pathlib import Path

import pytest
import torch

from omg_core.bridge.text_features import encode_prompts
from omg_core.model.basis import basis_rows
from omg_core.model.concept import Concept, DenseUpdate, LowRankUpdate
from omg_core.ops.fusion import FUSION_METHODS, patch_dense

TE_KEY = "clip_l.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight"


def _kv_keys(model):
    return [k for k in model.model_state_dict() if ".attn2.to_k." in k or ".attn2.to_v." in k]


def _concepts(model, dense_one=False):
    out = []
    for i, trigger in enumerate(("omgcat", "omgdog", "omgmug")):
        g = torch.Generator().manual_seed(i)
        unet = {}
        for j, key in enumerate(_kv_keys(model)):
            down = basis_rows(7, 8 * i + j, 4, 768) if i < 2 else torch.randn(4, 768, generator=g) / 28
            unet[key] = LowRankUpdate(torch.randn(320, 4, generator=g) * 0.05, down)
        if dense_one and i == 2:
            first = next(iter(unet))
            unet[first] = DenseUpdate(torch.randn(320, 768, generator=g) * 1e-3)
        te = {TE_KEY: LowRankUpdate(torch.randn(768, 2, generator=g) * 0.01, torch.randn(2, 768, generator=g) * 0.01)}
        out.append(
            Concept(trigger, (trigger,), "sd15", "test", unet=unet, text_encoder=te if i == 0 else {}, strength=0.8)
        )
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


def _node(comfy, name):
    return comfy.NODE_CLASS_MAPPINGS[name]


@pytest.fixture
def captured(comfy, monkeypatch):
    """The FusionResult each fusion node computes, caught on its way out of ``fuse``
    (the nodes fuse through ``omg_core.pipelines.fuse``)."""
    import omg_core.pipelines.fuse as module

    results = []
    real = module.fuse

    def spy(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(module, "fuse", spy)
    return results


def _live(patcher, key):
    return patcher.model.state_dict()[key].detach().clone().float()


@pytest.fixture
def base(sd15):
    """Base weights of the shared checkpoint; loads it unpatched again afterwards."""
    import comfy.model_management as mm

    model, clip, _ = sd15
    mm.load_models_gpu([model, clip.patcher])
    weights = {k: _live(model, k) for k in _kv_keys(model)}
    weights[TE_KEY] = _live(clip.patcher, TE_KEY)
    yield weights
    mm.load_models_gpu([model, clip.patcher])


def test_batched_truncated_prompt_encoding_equals_the_full_encoding(sd15):
    _, clip, _ = sd15
    prompts = ["a painting of a small red boat", "omgdog"]
    encoded = encode_prompts(clip, prompts)
    full = clip.encode_from_tokens(clip.tokenize(prompts[1]))[0, : encoded[1][0].shape[0]].float()
    torch.testing.assert_close(encoded[1][0], full, rtol=2e-2, atol=2e-2)
    assert [r.shape[0] for r, _ in encoded] == [9, 4]  # BOS, word pieces ("omg", "dog"), EOS; no padding
    labels = encoded[1][1]
    assert labels[0].startswith("<start>") and labels[-1].startswith("<end>") and labels[1].startswith("omg")


@pytest.mark.parametrize("method", ["additive", "constrained"])
def test_fuse_node_returns_clones_carrying_exactly_the_fused_weights(comfy, sd15, base, captured, method):
    import comfy.model_management as mm

    model, clip, _ = sd15
    concepts = _concepts(model)
    out = _node(comfy, "OMGFuseConcepts").execute(model, clip, concepts, method, 1e-3, "{trigger}", "a photo of a dog")
    new_model, new_clip, report = out.args
    assert new_model is not model and new_clip is not clip
    assert model.patches == {} and clip.patcher.patches == {}
    assert f"method {method}" in report
    if method != "additive":
        assert "cross-attention k/v layers fitted on text features" in report and "shared positions" in report
    (expected,) = captured
    mm.load_models_gpu([new_model, new_clip.patcher])
    for key, patch in expected.unet.items():
        torch.testing.assert_close(_live(new_model, key), base[key] + patch_dense(patch).float(), rtol=1e-4, atol=1e-5)
    te = base[TE_KEY] + patch_dense(expected.text_encoder[TE_KEY]).float()
    torch.testing.assert_close(_live(new_clip.patcher, TE_KEY), te, rtol=3e-3, atol=3e-3)


def test_fusion_nodes_explain_bad_input(comfy, sd15):
    model, clip, _ = sd15
    fuse_node = _node(comfy, "OMGFuseConcepts")
    with pytest.raises(ValueError, match="no concepts are connected"):
        fuse_node.execute(model, clip, [], "additive", 0.0)
    with pytest.raises(ValueError, match="placeholder"):
        fuse_node.execute(model, clip, _concepts(model), "least_squares", 0.0, "a photo of a cat")


def _check_lora_weights(lora_model, lora_clip, expected, base, rank):
    import comfy.model_management as mm

    mm.load_models_gpu([lora_model, lora_clip.patcher])
    checked = list(expected.unet.items())[:2] if rank < 12 else expected.unet.items()  # [0] holds the dense concept
    for key, patch in checked:
        delta = _live(lora_model, key) - base[key]
        want = patch_dense(patch).float()
        if rank < 12:  # SVD-truncated: exactly the best rank-r approximation
            s = torch.linalg.svdvals(want)
            best = float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt())
            assert float((delta - want).norm() / want.norm()) == pytest.approx(best, rel=1e-3, abs=1e-4)
        else:
            torch.testing.assert_close(delta, want, rtol=1e-3, atol=1e-5)
    te_delta = _live(lora_clip.patcher, TE_KEY) - base[TE_KEY]
    torch.testing.assert_close(te_delta, patch_dense(expected.text_encoder[TE_KEY]).float(), rtol=0.05, atol=2e-3)


def test_saved_lora_loads_with_stock_loraloader_and_reproduces_the_fused_weights(
    comfy, sd15, base, host, comfy_models_dir, captured
):
    """Exact when the fused result fits the rank (three rank-4 concepts: rank 12 <= 64), the best rank-6
    approximation otherwise (a dense concept forces an SVD), with the error stated."""
    import folder_paths
    from safetensors import safe_open

    model, clip, _ = sd15
    save = _node(comfy, "OMGSaveFusedLoRA")
    runs = [("additive", 64, _concepts(model)), ("additive", 6, _concepts(model, dense_one=True))]
    names, texts = [], []
    for method, rank, concepts in runs:
        text = save.execute(concepts, method, 1e-3, rank, f"loras/test_{rank}", clip, "{trigger}", "").args[0]
        saved = Path(folder_paths.get_output_directory()) / text.splitlines()[0].removeprefix("Saved ")
        assert saved.exists(), text
        with safe_open(str(saved), "pt") as f:
            assert f.metadata()["omg_fusion_method"] == method
            assert "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight" in set(f.keys())
        shutil.copy(saved, comfy_models_dir / "loras" / saved.name)
        names.append(saved.name)
        texts.append(text)
    assert "written exactly" in texts[0] and "0 truncated" in texts[0]
    assert "truncated by SVD" in texts[1] and "relative error of truncated layers" in texts[1]

    ckpt = folder_paths.get_filename_list("checkpoints")[0]
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    for i, name in enumerate(names):
        loader = str(10 * (i + 1))
        prompt[loader] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "lora_name": name,
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        }
        for out in (0, 1):
            prompt[f"{loader}{out}"] = {"class_type": "PreviewAny", "inputs": {"source": [loader, out]}}
    host.run(prompt)
    for i, (_, rank, _) in enumerate(runs):
        lora_model, lora_clip = (x[0] for x in host.node_outputs(str(10 * (i + 1)))[:2])
        _check_lora_weights(lora_model, lora_clip, captured[i], base, rank)


def _checkpoint_name(sd15_checkpoint) -> str:
    import folder_paths

    names = folder_paths.get_filename_list("checkpoints")
    return "omg-tiny-sd15.safetensors" if "omg-tiny-sd15.safetensors" in names else sd15_checkpoint.name


def test_three_fusion_methods_run_in_a_comfyui_workflow(sd15, sd15_checkpoint, host, comfy_models_dir):
    """Load Concept x2 -> Fuse (each method) -> sample; report, orthogonalize and save alongside."""
    from omg_core.formats.native import save_native

    model, _, _ = sd15
    names = []
    for concept in _concepts(model)[:2]:
        names.append(f"fusion-workflow-{concept.name}.safetensors")
        save_native(comfy_models_dir / "loras" / names[-1], concept)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": _checkpoint_name(sd15_checkpoint)}},
        "2": {
            "class_type": "OMGLoadConcept",
            "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": names[0], "strength": 1.0},
        },
        "3": {
            "class_type": "OMGLoadConcept",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "lora_name": names[1],
                "strength": 1.0,
                "concepts": ["2", 0],
            },
        },
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "60": {"class_type": "OMGOrthogonalityReport", "inputs": {"concepts": ["3", 0]}},
        "61": {"class_type": "PreviewImage", "inputs": {"images": ["60", 0]}},
        "62": {"class_type": "PreviewAny", "inputs": {"source": ["60", 1]}},
        "70": {"class_type": "OMGOrthogonalize", "inputs": {"concepts": ["3", 0], "method": "sequential"}},
        "72": {"class_type": "PreviewAny", "inputs": {"source": ["70", 1]}},
        "71": {
            "class_type": "OMGSaveFusedLoRA",
            "inputs": {
                "concepts": ["70", 0],
                "method": "additive",
                "regularization": 0.001,
                "rank": 16,
                "filename_prefix": "loras/workflow_fused",
            },
        },
    }
    for i, method in enumerate(FUSION_METHODS):
        fuse, enc, ks = str(10 + i), str(20 + i), str(30 + i)
        prompt[fuse] = {
            "class_type": "OMGFuseConcepts",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "concepts": ["3", 0],
                "method": method,
                "regularization": 0.001,
                "feature_prompts": "{trigger}",
                "regularization_prompts": "a photo of a dog",
            },
        }
        prompt[enc] = {"class_type": "CLIPTextEncode", "inputs": {"clip": [fuse, 1], "text": "omgcat and omgdog"}}
        prompt[ks] = {
            "class_type": "KSampler",
            "inputs": {
                "model": [fuse, 0],
                "positive": [enc, 0],
                "negative": [enc, 0],
                "latent_image": ["4", 0],
                "seed": 0,
                "steps": 1,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        }
        prompt[str(40 + i)] = {"class_type": "VAEDecode", "inputs": {"samples": [ks, 0], "vae": ["1", 2]}}
        prompt[str(50 + i)] = {"class_type": "PreviewImage", "inputs": {"images": [str(40 + i), 0]}}
        prompt[str(80 + i)] = {"class_type": "PreviewAny", "inputs": {"source": [fuse, 2]}}
    outputs = host.run(prompt)
    for i, method in enumerate(FUSION_METHODS):
        assert outputs[str(50 + i)]["images"], f"{method} produced no image"
        latent = host.node_outputs(str(30 + i))[0][0]["samples"]
        assert torch.isfinite(latent).all()
        assert f"method {method}" in outputs[str(80 + i)]["text"][0]
    assert outputs["61"]["images"] and "Cross-talk" in outputs["62"]["text"][0]
    assert "omgcat: own input subspace" in outputs["62"]["text"][0]
    assert "Orthogonalized 2 concepts (sequential)" in outputs["72"]["text"][0]
    assert "Saved loras/workflow_fused" in outputs["71"]["text"][0]


def test_fused_clip_knows_the_trigger_embeddings_and_features_use_them(comfy, sd15, captured):
    from omg_core.model.concept import TokenEmbedding

    model, clip, _ = sd15
    cat, dog, _ = _concepts(model)
    vectors = torch.randn(2, 768, generator=torch.Generator().manual_seed(3)) * 0.01
    cat = Concept(
        cat.name, cat.triggers, "sd15", "test", unet=cat.unet, embeddings=(TokenEmbedding("omgcat", "clip_l", vectors),)
    )
    fuse_node = _node(comfy, "OMGFuseConcepts")
    _, new_clip, _ = fuse_node.execute(model, clip, [cat, dog], "least_squares", 1e-3, "{trigger}", "").args
    tokens = new_clip.tokenize("a photo of omgcat")["l"][0]
    assert sum(1 for t in tokens if not isinstance(t[0], int)) == 2, "omgcat becomes its two learned vectors"
    assert all(isinstance(t[0], int) for t in clip.tokenize("a photo of omgcat")["l"][0]), "input CLIP untouched"
    labels = captured[0].features.labels
    assert sum("<embedding>" in lab for lab in labels) == 2
