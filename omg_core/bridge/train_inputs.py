"""What concept training reads: checked images, their augmented latents, the prompts.

Augmented copies are made once and VAE-encoded once (not every step), so the
per-step cost is the UNet alone. With a learned trigger embedding (Custom
Diffusion's V*), the trigger's tokens are replaced by ``embedding_vectors``
trainable vectors per text encoder (a textual-inversion token of that many
vectors), each initialised from the class word's token embedding, and the
instance prompt is encoded through ComfyUI's CLIP with gradients every step.
More than one vector gives the text side room for an object of several parts
or colours, which one vector near the class word holds poorly.

ComfyUI objects (CLIP, VAE, the model) are passed in; nothing is imported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omg_core.bridge.train_model import stream_seed


def check_images(images: torch.Tensor | None, what: str = "IMAGE batch") -> torch.Tensor:
    if images is None or not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"the {what} is empty: connect at least one image of the concept")
    if images.shape[1] < 8 or images.shape[2] < 8:
        raise ValueError(f"the {what} is {images.shape[2]}x{images.shape[1]} pixels; use images of at least 64x64")
    return images[..., :3].float().clamp(0, 1)


def augment_pool(pixels: torch.Tensor, variants: int, flip: bool, crop: float, seed: int, tag: int) -> torch.Tensor:
    """The images plus ``variants`` randomly flipped / crop-resized copies of
    each ([B, H, W, 3] -> [B·(1+variants), H, W, 3]), the originals first."""
    if not (flip or crop > 0) or variants == 0:
        return pixels
    gen = torch.Generator().manual_seed(stream_seed(seed, tag))
    h, w = pixels.shape[1:3]
    out = [pixels]
    for _ in range(variants):
        batch = []
        for img in pixels.unbind(0):
            x = img.movedim(-1, 0)  # [3, H, W]
            if flip and torch.rand((), generator=gen) < 0.5:
                x = x.flip(-1)
            if crop > 0:
                s = 1.0 - crop * float(torch.rand((), generator=gen))
                ch, cw = max(1, round(h * s)), max(1, round(w * s))
                top = int(torch.randint(0, h - ch + 1, (), generator=gen))
                left = int(torch.randint(0, w - cw + 1, (), generator=gen))
                x = x[:, top : top + ch, left : left + cw].unsqueeze(0)
                x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
            batch.append(x.clamp(0, 1).movedim(0, -1))
        out.append(torch.stack(batch))
    return torch.cat(out)


def encode_latents(vae, inner, pixels: torch.Tensor) -> torch.Tensor:
    """Latents as the UNet sees them (the model's latent scaling applied)."""
    with torch.no_grad():
        return inner.process_latent_in(vae.encode(pixels)).float()


class TextConditioning:
    """Model inputs per prompt (``c_crossattn``, and ``y`` for SDXL) from ComfyUI's CLIP."""

    def __init__(
        self,
        clip,
        inner,
        instance_prompt: str,
        prior_prompt: str,
        trigger: str,
        class_word: str,
        learn_embedding: bool,
        width: int,
        height: int,
        device,
        embedding_vectors: int = 1,
    ):
        self.clip, self.inner, self.device = clip, inner, device
        self.size = dict(width=width, height=height, target_width=width, target_height=height, crop_w=0, crop_h=0)
        self.vectors: dict[str, torch.Tensor] = {}  # encoder name ("clip_l") -> trainable [n, dim] vectors
        self.instance_tokens = clip.tokenize(instance_prompt)
        if learn_embedding:
            self.instance_tokens = self._with_trainable_trigger(instance_prompt, trigger, class_word, embedding_vectors)
        with torch.no_grad():
            self.fixed_instance = None if learn_embedding else self._encode(self.instance_tokens)
            self.prior = self._encode(clip.tokenize(prior_prompt))

    def _word_tokens(self, text: str) -> dict[str, list[int]]:
        tok = self.clip.tokenize(text, return_word_ids=True)
        return {k: [t[0] for t in v[0] if t[2] != 0] for k, v in tok.items()}

    def _with_trainable_trigger(self, prompt: str, trigger: str, class_word: str, count: int) -> dict:
        trig, cls = self._word_tokens(trigger), self._word_tokens(class_word)
        out = {}
        for enc, batches in self.clip.tokenize(prompt).items():
            seq = list(batches[0])
            ids = [t[0] for t in seq]
            n = len(trig[enc])
            start = next((i for i in range(len(ids) - n + 1) if ids[i : i + n] == trig[enc]), None)
            if start is None:
                raise ValueError(f"the trigger {trigger!r} does not survive tokenization of the prompt {prompt!r}")
            table = getattr(self.clip.cond_stage_model, f"clip_{enc}").transformer.get_input_embeddings().weight
            init = table[torch.tensor(cls[enc], device=table.device)].float().mean(0).detach().cpu()
            vectors = init.expand(count, -1).clone().to(self.device).requires_grad_(True)
            self.vectors[f"clip_{enc}"] = vectors
            rest = seq[start + n :]
            if count > n:  # the extra vectors take the place of padding at the end of the chunk
                end = getattr(self.clip.tokenizer, f"clip_{enc}").end_token
                padding = len(rest) - 1 - next((i for i, t in enumerate(rest) if t[0] == end), len(rest) - 1)
                if padding < count - n:
                    raise ValueError(
                        f"the training prompt {prompt!r} leaves no room for {count} trigger vectors in one "
                        "77-token chunk; shorten the prompt or use fewer embedding vectors"
                    )
                rest = rest[: len(rest) - (count - n)]
            else:  # pad at the end to keep the length
                rest = rest + [seq[-1]] * (n - count)
            seq = seq[:start] + [(vectors[i], 1.0) for i in range(count)] + rest
            out[enc] = [seq] + [list(b) for b in batches[1:]]
        return out

    def _encode(self, tokens) -> dict[str, torch.Tensor]:
        cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
        conds = self.inner.extra_conds(cross_attn=cond, pooled_output=pooled, device=self.device, **self.size)
        return {k: v.cond for k, v in conds.items()}

    def instance(self) -> dict[str, torch.Tensor]:
        return self.fixed_instance if self.fixed_instance is not None else self._encode(self.instance_tokens)
