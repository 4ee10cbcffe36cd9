"""A trigger word in a prompt is encoded as its learned vectors, through ComfyUI's own embedding path,
on a CLIP clone whose tokenizer is a copy: the input CLIP never changes."""

import pytest
import torch

from omg_core.bridge.trigger_tokens import clip_with_embeddings, mark_triggers, tokenizer_with_embeddings
from omg_core.model.concept import TokenEmbedding

VEC = torch.randn(2, 768, generator=torch.Generator().manual_seed(0))


def _ids(tokens):
    return [t if isinstance(t, int) else "vec" for t, _ in tokens]


def test_trigger_word_encodes_exactly_as_its_vectors_inserted_by_hand(sd15):
    _, clip, _ = sd15
    with_trigger = clip_with_embeddings(clip, [TokenEmbedding("omgcat", "clip_l", VEC)])
    tokens = with_trigger.tokenize("a photo of omgcat, sitting")
    by_hand = clip.tokenize("a photo of, sitting")["l"][0]
    by_hand = (by_hand[:4] + [(VEC[0], 1.0), (VEC[1], 1.0)] + by_hand[4:])[:77]
    plain = clip.tokenize("a photo of omgcat, sitting")["l"][0]
    # One encoder pass for all three (ComfyUI encodes a list of 77-token chunks as one batch).
    ours, manual, plain = clip.encode_from_tokens({"l": [tokens["l"][0], by_hand, plain]}).split(77, dim=1)
    torch.testing.assert_close(ours, manual)
    assert (ours - plain).abs().max() > 1e-2, "the embedding must change the conditioning"


def test_input_clip_and_its_tokenizer_are_unchanged(sd15):
    _, clip, _ = sd15
    tokenizer, sub = clip.tokenizer, clip.tokenizer.clip_l
    before = clip.tokenize("omgcat")
    clone = clip_with_embeddings(clip, [TokenEmbedding("omgcat", "clip_l", VEC)])
    assert clip.tokenizer is tokenizer and clip.tokenizer.clip_l is sub and type(sub).__name__ == "SDTokenizer"
    assert clone.tokenizer is not tokenizer and clone.tokenizer.clip_l is not sub
    assert clip.tokenize("omgcat") == before
    assert all(isinstance(t, int) for t, _ in clip.tokenize("omgcat")["l"][0])


def test_prompt_weights_case_and_punctuation_keep_working(sd15):
    _, clip, _ = sd15
    clone = clip_with_embeddings(clip, [TokenEmbedding("omgcat", "clip_l", VEC)])
    tokens = clone.tokenize("(omgcat:1.3) and OMGCAT.")["l"][0]
    vectors = [
        (w, torch.equal(t, VEC[i % 2])) for i, (t, w) in enumerate(x for x in tokens if not isinstance(x[0], int))
    ]
    assert vectors == [(1.3, True), (1.3, True), (1.0, True), (1.0, True)]
    # "omgcats" is another word, and words around the trigger are untouched.
    assert _ids(clone.tokenize("omgcats")["l"][0][:4]) == _ids(clip.tokenize("omgcats")["l"][0][:4])


def test_layer_wise_ed_lora_tokens_use_the_mean_over_layers(sd15):
    _, clip, _ = sd15
    layered = torch.randn(16, 1, 768, generator=torch.Generator().manual_seed(1))
    clone = clip_with_embeddings(clip, [TokenEmbedding("<cat1>", "clip_l", layered)])
    (vec,) = [t for t, _ in clone.tokenize("a <cat1> cat")["l"][0] if not isinstance(t, int)]
    torch.testing.assert_close(vec, layered.mean(dim=0)[0])


def test_sdxl_tokenizer_gets_clip_l_and_clip_g_vectors_in_both_streams(comfy):
    from comfy.sdxl_clip import SDXLTokenizer

    tokenizer = SDXLTokenizer()
    g = torch.randn(1, 1280)
    new = tokenizer_with_embeddings(
        tokenizer, [TokenEmbedding("<new1>", "clip_l", VEC[:1]), TokenEmbedding("<new1>", "clip_g", g)]
    )
    tokens = new.tokenize_with_weights("a <new1> dog")
    (vec_l,) = [t for t, _ in tokens["l"][0] if not isinstance(t, int)]
    (vec_g,) = [t for t, _ in tokens["g"][0] if not isinstance(t, int)]
    assert torch.equal(vec_l, VEC[0]) and torch.equal(vec_g, g[0])
    assert type(tokenizer.clip_g).__name__ == "SDXLClipGTokenizer"


def test_chained_calls_keep_earlier_triggers(sd15):
    _, clip, _ = sd15
    one = clip_with_embeddings(clip, [TokenEmbedding("omgcat", "clip_l", VEC[:1])])
    two = clip_with_embeddings(one, [TokenEmbedding("omgdog", "clip_l", VEC[1:])])
    vectors = [t for t, _ in two.tokenize("omgcat and omgdog")["l"][0] if not isinstance(t, int)]
    assert len(vectors) == 2 and torch.equal(vectors[0], VEC[0]) and torch.equal(vectors[1], VEC[1])
    assert len([t for t, _ in one.tokenize("omgdog")["l"][0] if not isinstance(t, int)]) == 0


def test_embedding_for_a_missing_encoder_is_refused(sd15):
    _, clip, _ = sd15
    with pytest.raises(ValueError, match="embedding for clip_g, which this CLIP does not have \\(it has clip_l\\)"):
        clip_with_embeddings(clip, [TokenEmbedding("omgcat", "clip_g", torch.randn(1, 1280))])


def test_embedding_of_the_wrong_width_is_refused(sd15):
    _, clip, _ = sd15
    with pytest.raises(ValueError, match="1024-wide but the clip_l text encoder takes 768"):
        clip_with_embeddings(clip, [TokenEmbedding("omgcat", "clip_l", torch.randn(1, 1024))])


def test_trigger_with_a_space_is_refused(sd15):
    _, clip, _ = sd15
    with pytest.raises(ValueError, match="must be a single word"):
        clip_with_embeddings(clip, [TokenEmbedding("omg cat", "clip_l", VEC)])


def test_marking_leaves_text_without_triggers_alone():
    table = {"omgcat": VEC}
    for text in ("a cat", "omgcats are here", "embedding:omgcat", "xomgcat"):
        assert mark_triggers(text, table) == text
    assert mark_triggers("OmgCat!", table) == " embedding:omgcat!"
