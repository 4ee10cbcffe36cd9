"""The fusion benchmark runs end to end (on tiny shapes) and prints its tables and targets."""

from benchmarks.fusion import main, make_concepts, sd15_shape, sdxl_shape


def test_benchmark_shapes_are_the_real_cross_attention_layers():
    sd15, sdxl = sd15_shape(), sdxl_shape()
    assert len(sd15.layers) == 32 and {out for _, out in sd15.layers} == {320, 640, 1280}
    assert len(sdxl.layers) == 140 and sum(out == 640 for _, out in sdxl.layers) == 20
    assert sd15.layers[0][0] == "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert len({k for k, _ in sdxl.layers}) == 140


def test_orthogonal_benchmark_concepts_use_disjoint_basis_slots():
    a, b = make_concepts(sd15_shape(), 2, "orthogonal")
    key = next(iter(a.unet))
    assert float((a.unet[key].down @ b.unet[key].down.T).abs().max()) < 1e-6


def test_quick_benchmark_prints_every_method_and_the_targets(capsys):
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    for text in ("additive", "least_squares", "constrained", "Cross-talk of the concept sets", "speed-up"):
        assert text in out
    assert "target least squares >= 100x faster than GD" in out
    assert "target orthogonal cross-talk lower than random" in out
