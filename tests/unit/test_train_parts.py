"""Concept training, the parts that need no ComfyUI: settings, images, augmentation,
LoRA arithmetic, parameter counting, the loss curve."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omg_core.bridge.train_inputs import augment_pool, check_images
from omg_core.bridge.train_model import Adapter, check_layout, stream_seed
from omg_core.bridge.train_report import trainable_parameters
from omg_core.model.concept import LowRankUpdate
from omg_core.pipelines.train import TrainConfig, check_output_path
from omg_core.render.loss_curve import loss_curve_image


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"trigger": "omgcat", "class_word": "cat", **kw})


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"trigger": "omg cat"}, "trigger word 'omg cat' must be one word"),
        ({"trigger": "(omgcat:1.2)"}, "without spaces, brackets"),
        ({"trigger": ""}, "must be one word"),
        ({"class_word": "  "}, "class word is empty"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"learning_rate": 0.0}, "learning rate must be positive"),
        ({"rank": 0}, "rank must be at least 1"),
        ({"target": "everything"}, "target 'everything' is unknown"),
        ({"down": "random"}, "down-projection mode 'random' is unknown"),
        ({"crop": 1.0}, r"crop must be in \[0, 1\)"),
        ({"embedding_lr": -1.0}, "embedding learning rate must be positive"),
        ({"prior_weight": -0.5}, "prior_weight must be 0 or more"),
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"augment_variants": -1}, "augment_variants must be 0 or more"),
        ({"prompt": "a photo of a cat"}, "must contain '{trigger}'"),
    ],
)
def test_bad_settings_are_refused_with_what_to_do(kw, message):
    with pytest.raises(ValueError, match=message):
        _config(**kw).validate()


def test_prompts_put_the_trigger_before_the_class_word():
    c = _config(trigger=" omgcat ", class_word="cat ")
    assert c.instance_prompt() == "a photo of omgcat cat"
    assert c.prior_prompt() == "a photo of cat"


def test_empty_image_batch_is_refused():
    with pytest.raises(ValueError, match="IMAGE batch is empty: connect at least one image"):
        check_images(torch.zeros(0, 64, 64, 3))
    with pytest.raises(ValueError, match="is empty"):
        check_images(None)


def test_images_keep_rgb_and_range():
    out = check_images(torch.full((2, 16, 16, 4), 2.0))
    assert out.shape == (2, 16, 16, 3) and out.max() == 1.0


class _Linear:
    def __init__(self, out_features, in_features):
        self.out_features, self.in_features = out_features, in_features


def test_rank_too_large_names_the_limit():
    layers = {"a": _Linear(320, 768), "b": _Linear(640, 768)}
    with pytest.raises(ValueError, match="rank 400 is too large.*at most 320"):
        check_layout(layers, rank=400, slot=0, down="basis")


def test_slot_out_of_range_names_the_valid_slots():
    layers = {"a": _Linear(320, 768)}
    with pytest.raises(ValueError, match="slot 192 is out of range.*from 0 to 191"):
        check_layout(layers, rank=4, slot=192, down="basis")
    check_layout(layers, rank=4, slot=191, down="basis")
    check_layout(layers, rank=4, slot=192, down="free")  # free down-projections have no slots


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), size=st.integers(8, 24), variants=st.integers(0, 3), seed=st.integers(0, 2**40))
def test_augmentation_pool_starts_with_the_originals_and_is_seeded(n, size, variants, seed):
    pixels = torch.rand(n, size, size + 3, 3, generator=torch.Generator().manual_seed(seed % 1000))
    pool = augment_pool(pixels, variants, flip=True, crop=0.2, seed=seed, tag=-2)
    assert pool.shape == (n * (1 + variants), size, size + 3, 3)
    assert torch.equal(pool[:n], pixels)
    assert 0.0 <= float(pool.min()) and float(pool.max()) <= 1.0
    assert torch.equal(pool, augment_pool(pixels, variants, flip=True, crop=0.2, seed=seed, tag=-2))


def test_augmentation_off_returns_the_images_unchanged():
    pixels = torch.rand(2, 8, 8, 3)
    assert augment_pool(pixels, 3, flip=False, crop=0.0, seed=0, tag=0) is pixels


def test_flip_only_augmentation_gives_mirror_images():
    pixels = torch.rand(1, 8, 8, 3)
    pool = augment_pool(pixels, 6, flip=True, crop=0.0, seed=3, tag=0)
    for copy in pool[1:]:
        assert torch.equal(copy, pixels[0]) or torch.equal(copy, pixels[0].flip(1))


def test_random_streams_differ_per_step_and_seed():
    seeds = {stream_seed(s, k) for s in range(4) for k in range(-4, 50)}
    assert len(seeds) == 4 * 54


def test_adapter_term_is_the_low_rank_update_the_concept_stores():
    g = torch.Generator().manual_seed(0)
    down, up, x = torch.randn(3, 12, generator=g), torch.randn(7, 3, generator=g), torch.randn(5, 12, generator=g)
    a = Adapter(down=down, up=up, scale=0.5)
    assert torch.allclose(a.delta(x), LowRankUpdate(up=up, down=down, scale=0.5).apply(x), atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    dims=st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64)), min_size=1, max_size=6),
    rank=st.integers(1, 8),
)
def test_parameter_counts_follow_the_lora_factor_shapes(dims, rank):
    shapes = {}
    for i, (o, n) in enumerate(dims):
        shapes[f"diffusion_model.b{i}.attn2.to_k.weight"] = (o, n)
        shapes[f"diffusion_model.b{i}.attn1.to_q.weight"] = (o, o)
    kv = trainable_parameters(shapes, rank, "kv", "basis")
    assert kv == rank * sum(o for o, _ in dims)
    assert trainable_parameters(shapes, rank, "kv", "free") == kv + rank * sum(n for _, n in dims)
    assert trainable_parameters(shapes, rank, "attention", "basis") == kv + rank * sum(o for o, _ in dims)


@pytest.mark.parametrize("losses", [[], [0.7], [1.0, 1.0, 1.0], [1.0 / (1 + i) for i in range(300)]])
def test_loss_curve_is_an_rgb_image_batch(losses):
    img = loss_curve_image(losses, width=200, height=100)
    assert img.shape == (1, 100, 200, 3) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert float(img.std()) > 0  # something was drawn


def test_output_path_never_overwrites_a_file_that_is_not_a_trained_concept(tmp_path):
    from safetensors.torch import save_file

    check_output_path(tmp_path / "new.safetensors")  # absent: fine
    foreign = tmp_path / "someones-lora.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    with pytest.raises(ValueError, match="already exists: choose another output filename"):
        check_output_path(foreign)
    with pytest.raises(ValueError, match="already exists and is not a concept trained by this node"):
        check_output_path(foreign, overwrite=True)
    trained = tmp_path / "trained.safetensors"
    save_file({"x": torch.zeros(1)}, str(trained), metadata={"omg_source_format": "trained"})
    with pytest.raises(ValueError, match="already exists: choose another output filename, or turn overwrite on"):
        check_output_path(trained)
    check_output_path(trained, overwrite=True)
