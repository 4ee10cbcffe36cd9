"""Text features: what the cross-attention k/v projections read for a concept.

Fusion and cross-talk are measured on the rows of the CLIP encoding of
prompts that contain a concept's trigger word. Only positions up to and
including the end-of-text token are used: the padding that follows carries
no new information but would outnumber the real tokens ten to one. Each
concept's prompts are encoded by the text encoder *as that concept changes
it* (its trigger embeddings and its own text-encoder updates), as Mix-of-Show
does; rows that concepts share (BOS, "a photo of") are left for the fusion
to de-duplicate.

Works on ComfyUI's CLIP object through its public methods (``tokenize``,
``encode_from_tokens``); ComfyUI modules are imported lazily by the helpers
called here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from omg_core.bridge.patching import apply_updates
from omg_core.model.concept import Concept

DEFAULT_TEMPLATES = (
    "{trigger}",
    "a photo of {trigger}",
    "a close-up photo of {trigger}",
)

# Neutral captions the constrained fusion keeps unchanged and on which drift
# is measured; none names a concept.
REGULARIZATION_PROMPTS = (
    "a photo of a person",
    "a photo of a dog",
    "a cup of coffee on a table",
    "a landscape with mountains and a lake",
    "a city street at night",
    "an oil painting of a ship at sea",
    "a close-up photo of a flower",
    "a living room with a sofa",
)

Progress = Callable[[int, int], None] | None


def parse_templates(text: str) -> tuple[str, ...]:
    """One prompt template per line, each containing ``{trigger}``."""
    lines = tuple(line.strip() for line in (text or "").splitlines() if line.strip())
    if not lines:
        return DEFAULT_TEMPLATES
    bad = [line for line in lines if "{trigger}" not in line]
    if bad:
        raise ValueError(
            f"every feature prompt needs the placeholder {{trigger}} (where the concept's trigger word goes); "
            f"this line has none: {bad[0]!r}"
        )
    return lines


def parse_prompts(text: str) -> tuple[str, ...]:
    """One prompt per line; blank lines are skipped."""
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


def concept_prompts(concept: Concept, templates: Sequence[str]) -> list[str]:
    if not concept.triggers:
        raise ValueError(
            f"concept {concept.name!r} has no trigger word, so no prompt can call it; set its trigger in OMG Load Concept"
        )
    return [t.replace("{trigger}", trigger) for trigger in concept.triggers for t in templates]


def _real_length(clip, tokens: dict) -> tuple[int, list[str]]:
    """Number of positions up to and including the end token, and their token texts."""
    key = next(iter(tokens))
    row = tokens[key][0]
    sub = getattr(clip.tokenizer, f"clip_{key}", None)
    end = getattr(sub, "end_token", 49407)
    vocab = getattr(sub, "inv_vocab", {})
    labels = []
    for i, tok in enumerate(row):
        t = tok[0]
        is_id = isinstance(t, int)
        labels.append(vocab.get(t, str(t)).replace("</w>", "") if is_id else "<embedding>")
        if is_id and t == end:
            return i + 1, labels
    return len(row), labels


def encode_prompts(clip, prompts: Sequence[str]) -> list[tuple[torch.Tensor, list[str]]]:
    """Encoded rows [positions, context] (BOS..EOS) of each prompt, with a label per row.

    All prompts go through the text encoder in one batch: ComfyUI encodes
    the 77-token chunks of a token list side by side, so the chunks of many
    prompts make one forward pass. Prompts longer than one chunk are encoded
    by their first chunk.
    """
    if not prompts:
        return []
    tokenized = [clip.tokenize(p) for p in prompts]
    lengths, words = zip(*(_real_length(clip, t) for t in tokenized))
    batch = {key: [t[key][0] for t in tokenized] for key in tokenized[0]}
    cond = clip.encode_from_tokens(batch)
    chunk = cond.shape[1] // len(prompts)
    cond = cond.detach().float().cpu().reshape(len(prompts), chunk, cond.shape[-1])
    if not torch.isfinite(cond).all():
        raise ValueError("the CLIP encoding of the feature prompts contains NaN or Inf; the text encoder is broken")
    out = []
    for i, prompt in enumerate(prompts):
        n = lengths[i]
        names = ["<start>" if j == 0 else "<end>" if j == n - 1 else words[i][j] for j in range(n)]
        out.append((cond[i, :n].clone(), [f"{w} ('{prompt}' #{j})" for j, w in enumerate(names)]))
    return out


def clip_with_trigger_embeddings(clip, concepts: Sequence[Concept]):
    """A CLIP whose tokenizer knows every concept's trigger embeddings (the input itself when none have any)."""
    embeddings = [e for c in concepts for e in c.embeddings]
    if not embeddings:
        return clip
    from omg_core.bridge.trigger_tokens import clip_with_embeddings

    return clip_with_embeddings(clip, embeddings)


def concept_text_features(
    clip, concepts: Sequence[Concept], templates: Sequence[str] = DEFAULT_TEMPLATES, progress: Progress = None
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Per concept: the rows of its prompts as its own text encoder encodes them, with labels."""
    base = clip_with_trigger_embeddings(clip, concepts)
    features, labels = {}, {}
    for step, c in enumerate(concepts):
        prompts = concept_prompts(c, templates)
        te = {k: u for k, u in c.scaled_layers().items() if k in c.text_encoder}
        own = apply_updates(None, base, {}, te)[1] if te else base
        encoded = encode_prompts(own, prompts)
        features[c.name] = torch.cat([rows for rows, _ in encoded])
        labels[c.name] = [lab for _, labs in encoded for lab in labs]
        if progress is not None:
            progress(step + 1, len(concepts))
    return features, labels


def regularization_features(clip, prompts: Sequence[str] = REGULARIZATION_PROMPTS) -> torch.Tensor:
    """Rows of neutral captions, encoded by the unchanged text encoder."""
    return torch.cat([rows for rows, _ in encode_prompts(clip, prompts)])
