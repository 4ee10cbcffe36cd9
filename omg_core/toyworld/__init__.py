"""A toy world in which generation means something.

No pretrained Stable Diffusion weights reach the machines this pack is built
and tested on, and a random-weight model draws noise, so nothing could say
whether two concepts really ended up in their own boxes. This subpackage
builds a small world where it can be said:

- ``scenes``: seeded procedural images of coloured shapes with captions and
  ground-truth boxes, plus "personal" objects the base model never sees;
- ``detector``: a small classifier that says which object is in a box;
- ``base_model``: trains a TAESD autoencoder and the SD1.5-layout UNet on the
  scenes and assembles a checkpoint that ComfyUI's own loader accepts;
- ``concepts``: the personal concepts, trained with the pack's trainer;
- ``layouts``, ``outcomes``: box layouts and what the composition benchmark
  (``benchmarks.composition``) reads in each box;
- ``tiny_checkpoints``: the SD1.5/SDXL-layout checkpoints the toy model is
  built on (also the small random models of the tests).

``scenes`` and ``detector`` are pure numpy/torch; the other modules import
ComfyUI lazily inside functions.
"""
