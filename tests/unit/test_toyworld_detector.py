"""The toy world's detector: crops what it is asked about, and is right on held-out renders."""

from __future__ import annotations

import pytest
import torch

from omg_core.toyworld import detector as D
from omg_core.toyworld import scenes as S


def test_crop_of_the_whole_image_is_the_image_resampled():
    img = S.to_tensor(S.personal_training_set("kite", 1)[0].image)
    crop = D.crop_boxes(img, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), size=64)
    assert torch.allclose(crop, img, atol=1e-5)


def test_crop_of_a_box_holds_that_box_only():
    obj = S.PlacedObject("red square", (32, 0, 64, 32))
    img = S.to_tensor(S.render([obj], "grey"))
    inside = D.crop_boxes(img, torch.tensor([[0.5, 0.0, 1.0, 0.5]]))
    outside = D.crop_boxes(img, torch.tensor([[0.0, 0.5, 0.5, 1.0]]))
    red = torch.tensor(S.COLOURS["red"]).view(3, 1, 1) / 255
    assert (inside - red).abs().max() < 0.05
    assert (outside - red).abs().amax(dim=1).min() > 0.3


def test_training_examples_are_seeded_and_class_balanced():
    a = D.make_dataset(2 * len(D.CLASSES), seed=3)
    b = D.make_dataset(2 * len(D.CLASSES), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.bincount(a[2], minlength=len(D.CLASSES)).tolist() == [2] * len(D.CLASSES)


def test_augmentation_keeps_images_in_range_and_changes_them():
    images = D.make_dataset(8, seed=1)[0]
    out = D.augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images)


@pytest.fixture(scope="module")
def detector():
    if not D.ASSET.exists():
        pytest.fail(f"the shipped detector {D.ASSET} is missing; train it with scripts/train_toyworld.py")
    return D.load_detector()


def test_shipped_detector_names_held_out_renders_correctly(detector):
    result = D.evaluate(detector, n=21 * 20, seed=777)
    assert result.accuracy >= 0.95, result.confusions[:5]
    assert min(result.per_class.values()) >= 0.75, result.per_class


def test_detector_tells_each_personal_object_from_its_parts(detector):
    """A kite is not 'a green triangle', a target is not 'a blue circle': the second colour decides."""
    for name in S.PERSONAL_OBJECTS:
        images, boxes = [], []
        for scene in S.personal_training_set(name, 10, seed=99):
            images.append(scene.image)
            x0, y0, x1, y1 = scene.objects[0].box
            boxes.append([max(0, x0 - 4) / 64, max(0, y0 - 4) / 64, min(64, x1 + 4) / 64, min(64, y1 + 4) / 64])
        probs = detector.probabilities(S.to_tensor(images), torch.tensor(boxes))
        assert (probs.argmax(-1) == D.CLASSES.index(name)).float().mean() >= 0.9, name


def test_classify_reads_each_box_of_one_image(detector):
    objects = [S.PlacedObject("blue cross", (4, 4, 28, 28)), S.PlacedObject("house", (36, 36, 60, 60))]
    img = S.to_tensor(S.render(objects, "beige"))[0]
    assert detector.classify(img, [(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1), (0.5, 0, 1, 0.5)]) == [
        "blue cross",
        "house",
        "empty",
    ]


def test_missing_or_foreign_detector_file_says_how_to_get_one(tmp_path):
    with pytest.raises(ValueError, match="no toy-world detector at .*train_toyworld.py"):
        D.load_detector(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"classes": "cat,dog"})
    with pytest.raises(ValueError, match="knows classes .*cat.*retrain"):
        D.load_detector(path)
