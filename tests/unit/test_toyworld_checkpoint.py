"""Shipped toy-world weights: quantised storage round trip and the text-encoder check."""

from __future__ import annotations

import pytest
import torch

from benchmarks.composition import _readings, assignments, caption_order, wilson
from omg_core.toyworld import checkpoint as CK


def test_int8_storage_round_trip_is_within_half_a_step_per_channel():
    gen = torch.Generator().manual_seed(0)
    state = {
        "conv.weight": torch.randn(320, 320, 3, 3, generator=gen) * 0.02,
        "lin.weight": torch.randn(640, 320, generator=gen) * torch.linspace(0.01, 1, 640)[:, None],
        "norm.weight": torch.rand(320, generator=gen),
    }
    stored = CK.quantise_unet(state)
    assert stored["unet_q.conv.weight"].dtype == torch.int8 and stored["unet_f.norm.weight"].dtype == torch.float16
    back = CK.dequantise_unet(stored, torch.float32)
    for k, v in state.items():
        rows = v.reshape(v.shape[0], -1)
        step = rows.abs().amax(1, keepdim=True) / 127
        err = (back[k].reshape_as(rows) - rows).abs()
        assert (err <= step / 2 + 1e-3 * rows.abs().amax()).all(), k


def test_a_changed_text_encoder_is_refused_with_advice():
    reference = [[0.0] * CK.PROBE_DIMS for _ in CK.PROBE_TOKENS]
    state = CK.build_text_encoder(2)
    with pytest.raises(ValueError, match="rebuilt from seed 2 does not match.*retrain"):
        CK.check_text_encoder(state, reference, 2)


def test_wilson_interval_contains_the_rate_and_narrows_with_n():
    for k, n in [(0, 10), (5, 10), (10, 10), (30, 100)]:
        lo, hi = wilson(k, n)
        assert 0 <= lo <= k / n <= hi <= 1
    assert wilson(50, 100)[1] - wilson(50, 100)[0] < wilson(5, 10)[1] - wilson(5, 10)[0]
    assert wilson(0, 0) == (0.0, 1.0)


def test_assignments_are_distinct_ordered_choices():
    names = ["a", "b", "c", "d"]
    picks = assignments(names, 3, 24, seed=0)
    assert len(picks) == 24 == len(set(picks)) and all(len(set(p)) == 3 for p in picks)
    assert assignments(names, 3, 24, seed=0) == picks
    with pytest.raises(ValueError, match="5 concepts asked for, but only 4 are loaded"):
        assignments(names, 5, 10, seed=0)


def test_a_concepts_readings_are_its_commonest_labels_as_shares():
    counts = {"kite": 6, "red triangle": 3, "empty": 2, "target": 2, "house": 1}
    assert _readings(counts) == "kite 0.43, red triangle 0.21, empty 0.14"  # ties in name order
    assert _readings({}) == "-"


def test_caption_order_is_left_to_right_then_top_to_bottom():
    quadrants = [(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.5, 0.5, 1, 1)]
    assert caption_order(quadrants) == [0, 2, 1, 3]


def test_a_trained_concept_file_carries_its_training_record_so_a_run_resumes_past_it(tmp_path):
    from omg_core.formats.native import save_native
    from omg_core.model.concept import Concept, LowRankUpdate
    from omg_core.toyworld.concepts import trained_stats

    concept = Concept(
        name="kite",
        triggers=("kite",),
        family="sd15",
        source_format="native",
        unet={"diffusion_model.x.attn2.to_k.weight": LowRankUpdate(torch.ones(4, 2), torch.ones(2, 3), 1.0)},
    )
    record = {"seconds": 12.5, "probe_loss_start": 0.2, "probe_loss_end": 0.1}
    save_native(tmp_path / "done.safetensors", concept, {"toyworld_train": record})
    save_native(tmp_path / "other.safetensors", concept)
    assert trained_stats(tmp_path / "done.safetensors") == record
    assert trained_stats(tmp_path / "other.safetensors") is None
    assert trained_stats(tmp_path / "missing.safetensors") is None


def test_the_toy_recipe_reaches_the_trainer_config_whole():
    """Every recipe field that the trainer reads arrives in its TrainConfig (a field lost on the way
    would train every toy concept with the trainer's default instead, silently)."""
    from dataclasses import replace

    from omg_core.toyworld.concepts import ConceptTrainSettings, train_config

    settings = replace(ConceptTrainSettings(), steps=7, learning_rate=0.02, rank=2, batch_size=3, crop=0.25)
    config = train_config("kite", 2, "orthogonal", settings)
    assert (config.steps, config.learning_rate, config.rank, config.batch_size, config.crop) == (7, 0.02, 2, 3, 0.25)
    assert (config.slot, config.down, config.learn_embedding) == (2, "basis", settings.learn_embedding)
    config.validate()
    attention, plain = train_config("kite", 2, "attention", settings), train_config("kite", 2, "plain", settings)
    assert (attention.target, attention.steps, plain.down, plain.steps) == ("attention", 14, "free", 7)


def test_the_every_projection_kind_chooses_among_shorter_counts_of_one_run():
    from omg_core.toyworld.concepts import KINDS, ConceptTrainSettings

    settings = ConceptTrainSettings()
    assert KINDS["attention"].candidate_steps(settings) == (600, 800)
    assert KINDS["orthogonal"].candidate_steps(settings) == () == KINDS["plain"].candidate_steps(settings)


def _candidates(tmp_path, counts):
    from omg_core.formats.native import save_native
    from omg_core.model.concept import Concept, LowRankUpdate
    from omg_core.toyworld.concepts import candidate_file

    files = {}
    for k in counts:
        up = torch.full((4, 2), float(k))
        concept = Concept(
            name="kite",
            triggers=("kite",),
            family="sd15",
            source_format="trained",
            unet={"diffusion_model.x.attn2.to_k.weight": LowRankUpdate(up, torch.ones(2, 3), 1.0)},
        )
        files[k] = candidate_file("kite", "attention", k, tmp_path)
        save_native(files[k], concept, {"toyworld": "1"})
    return files


def test_the_chosen_candidate_ships_with_the_reading_behind_it(tmp_path):
    from safetensors.torch import load_file

    from omg_core.toyworld.concepts import ship_candidate, trained_stats

    files = _candidates(tmp_path, (2, 3, 4))
    out = tmp_path / "toyworld-kite-attention.safetensors"
    reading = {"hits": {2: 40, 3: 47, 4: 45}}
    record = ship_candidate("kite", "attention", files, {"seconds": 9.0}, out, lambda n, k, f: (3, reading))
    stored = trained_stats(out)
    assert (record["steps"], stored["steps"], stored["trained_steps"], stored["seconds"]) == (3, 3, 4, 9.0)
    assert stored["reading"] == {"hits": {"2": 40, "3": 47, "4": 45}}  # as JSON keeps it
    shipped, chosen = load_file(str(out)), load_file(str(files[3]))
    assert shipped.keys() == chosen.keys() and all(torch.equal(shipped[k], chosen[k]) for k in chosen)
    unread = ship_candidate("kite", "attention", files, {"seconds": 9.0}, out, None)
    assert unread["steps"] == 4  # no reading: the full run
    with pytest.raises(ValueError, match=r"candidates are \[2, 3, 4\]"):
        ship_candidate("kite", "attention", files, {"seconds": 9.0}, out, lambda n, k, f: (5, {}))
    files[2].unlink()
    with pytest.raises(ValueError, match="missing"):
        ship_candidate("kite", "attention", files, {"seconds": 9.0}, out, lambda n, k, f: (3, {}))
