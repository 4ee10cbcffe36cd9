"""The trainer-fidelity benchmark's variants: TrainConfig fields and the photo size, typed; others refused."""

from __future__ import annotations

import pytest

from benchmarks.trainer_fidelity import Variant


def test_a_variant_reads_typed_fields_and_the_photo_size():
    v = Variant.parse("big:size=128,steps=200,form=svd,learning_rate=0.01,learn_embedding=false")
    assert v.name == "big"
    assert v.changes == {"size": 128, "steps": 200, "form": "svd", "learning_rate": 0.01, "learn_embedding": False}
    assert Variant.parse("shipped").changes == {}


def test_an_unknown_field_is_refused_with_the_known_ones():
    with pytest.raises(SystemExit, match="'colour=red' is not field=value.*'size'"):
        Variant.parse("x:colour=red")
