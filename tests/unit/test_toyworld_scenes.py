"""The toy world's data generator: seeded, boxes that match the pixels, captions that name them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omg_core.toyworld import scenes as S


def _background_mask(scene: S.Scene, tol: int = 6) -> np.ndarray:
    """Pixels that are background: close to the plain tint (or its textured stripe)."""
    bg = np.array(S.BACKGROUNDS[scene.background], dtype=int)
    diff = np.abs(scene.image.astype(int) - bg).max(-1)
    if scene.background == "paper":
        diff = np.minimum(diff, np.abs(scene.image.astype(int) - (bg - 12)).max(-1))
    return diff <= tol


def test_same_seed_gives_identical_scenes_and_another_seed_does_not():
    pool = S.base_caption_pool(0)
    a = [S.sample_base_scene(np.random.default_rng(5), pool)[0] for _ in range(2)]
    b = S.sample_base_scene(np.random.default_rng(6), pool)[0]
    assert np.array_equal(a[0].image, a[1].image) and a[0].caption == a[1].caption and a[0].objects == a[1].objects
    assert not np.array_equal(a[0].image, b.image)
    assert S.base_caption_pool(0) == pool


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_every_non_background_pixel_lies_in_a_ground_truth_box(seed):
    scene, _ = S.sample_base_scene(np.random.default_rng(seed), S.base_caption_pool(0))
    inside = np.zeros(scene.image.shape[:2], bool)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        inside[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True  # 1 px of antialiasing
    assert not (~_background_mask(scene) & ~inside).any()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_each_box_holds_its_objects_colour_and_touches_all_four_edges(seed):
    scene, _ = S.sample_base_scene(np.random.default_rng(seed), S.base_caption_pool(0))
    fg = ~_background_mask(scene, tol=40)
    for obj in scene.objects:
        colour = np.array(S.COLOURS[obj.label.split(" ")[0]])
        x0, y0, x1, y1 = obj.box
        patch = scene.image[y0:y1, x0:x1].astype(int)
        assert (np.abs(patch - colour).max(-1) < 30).mean() > 0.2, obj
        m = fg[y0:y1, x0:x1]
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), obj  # the box is tight


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_layouts_are_inside_the_image_apart_and_left_to_right(seed, n):
    boxes = S.sample_layout(np.random.default_rng(seed), n)
    assert len(boxes) == n
    for i, a in enumerate(boxes):
        assert 0 <= a[0] < a[2] <= S.IMAGE_SIZE and 0 <= a[1] < a[3] <= S.IMAGE_SIZE
        for b in boxes[i + 1 :]:
            assert S._apart(a, b, 2)
    centres = [b[0] + b[2] for b in boxes]
    assert centres == sorted(centres)


def test_caption_names_objects_in_box_order():
    scene, index = S.sample_base_scene(np.random.default_rng(3), S.base_caption_pool(0))
    assert scene.caption == S.caption([o.label for o in scene.objects])
    assert S.caption(["red circle"]) == "a red circle"
    assert S.caption(["red circle", "kite"]) == "a red circle and a kite"
    assert S.caption(["red circle", "blue square", "green cross"]) == "a red circle, a blue square and a green cross"


def test_base_captions_never_name_a_personal_object():
    words = {w for entry in S.base_caption_pool(0) for w in S.caption(entry).replace(",", "").split()}
    assert not words & set(S.PERSONAL_OBJECTS.values())


def test_personal_training_set_is_ten_seeded_photos_of_that_object():
    a = S.personal_training_set("kite", seed=1)
    b = S.personal_training_set("kite", seed=1)
    assert len(a) == 10 and all(s.caption == "a kite" and s.objects[0].label == "kite" for s in a)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    other = S.personal_training_set("berry", seed=1)
    assert not np.array_equal(a[0].image, other[0].image)


def test_personal_objects_show_two_colours():
    for name in S.PERSONAL_OBJECTS:
        scene = S.personal_training_set(name, 1)[0]
        x0, y0, x1, y1 = scene.objects[0].box
        patch = scene.image[y0:y1, x0:x1].reshape(-1, 3).astype(int)
        present = [c for c, rgb in S.COLOURS.items() if (np.abs(patch - np.array(rgb)).max(-1) < 30).sum() > 8]
        assert len(present) == 2, (name, present)


def test_unknown_names_say_what_exists():
    with pytest.raises(ValueError, match="unknown toy-world object 'star'.*red circle"):
        S.caption(["star"])
    with pytest.raises(ValueError, match="unknown personal object 'star'.*kite"):
        S.personal_training_set("star")
    with pytest.raises(ValueError, match="unknown background 'night'.*grey"):
        S.render([], "night")
    with pytest.raises(ValueError, match="1 to 4 objects, not 5"):
        S.sample_layout(np.random.default_rng(0), 5)


def test_to_tensor_is_channels_first_in_unit_range():
    img = S.personal_training_set("house", 1)[0].image
    t = S.to_tensor(img)
    assert t.shape == (1, 3, 64, 64) and 0 <= t.min() and t.max() <= 1
    assert np.allclose(t[0].permute(1, 2, 0).numpy() * 255, img)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_composition_scenes_are_laid_out_like_the_benchmark_boxes(seed):
    """Objects a quarter to 0.6 of the 128-px side, at least 4 % of it apart, all pixels in their boxes;
    an empty scene is captioned as one and indexed past the pool."""
    pool = S.base_caption_pool(0)
    scene, index = S.sample_composition_scene(np.random.default_rng(seed), pool)
    size = S.COMPOSITION_SIZE
    assert scene.image.shape == (size, size, 3)
    if not scene.objects:
        assert index == len(pool) and scene.caption == S.EMPTY_CAPTION
        assert _background_mask(scene).all()
        return
    assert pool[index] == tuple(o.label for o in scene.objects) and scene.caption == S.caption(pool[index])
    inside = np.zeros(scene.image.shape[:2], bool)
    for i, obj in enumerate(scene.objects):
        x0, y0, x1, y1 = obj.box
        assert 0.22 * size - 1 <= x1 - x0 <= 0.6 * size + 1 and x1 - x0 == y1 - y0
        assert all(S._apart(obj.box, other.box, round(0.04 * size)) for other in scene.objects[i + 1 :])
        inside[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True
    assert not (~_background_mask(scene) & ~inside).any()


def test_scenes_render_at_the_size_asked_with_the_same_drawing():
    """A 128-px render of doubled boxes is the 64-px render drawn at twice the resolution."""
    objects = (S.PlacedObject("red circle", (4, 6, 30, 32)), S.PlacedObject("house", (36, 30, 60, 54)))
    small = S.render(objects, "sky")
    large = S.render(tuple(S.PlacedObject(o.label, tuple(2 * v for v in o.box)) for o in objects), "sky", 128)
    assert large.shape == (128, 128, 3)
    pooled = large.astype(float).reshape(64, 2, 64, 2, 3).mean((1, 3))
    assert np.abs(pooled - small).mean() < 2.0
    photos = S.personal_training_set("kite", 3, seed=1, size=128)
    assert all(s.image.shape == (128, 128, 3) and 48 <= s.objects[0].box[2] - s.objects[0].box[0] <= 80 for s in photos)
    assert S.caption([]) == S.EMPTY_CAPTION
