"""OMG core, in layers; each imports only the layers above it in this list.

- ``families``: one object per model family (SD1.5, SDXL) holding its facts;
- ``model``: the Concept and its update kinds, the shared orthogonal basis;
- ``ops``: orthogonality, fusion, regions, attention math, placement settings;
- ``formats``: adapter-file readers (one list) and writers;
- ``render``: every picture the nodes show;
- ``bridge``: everything that touches ComfyUI objects (binding, weight
  patches, attention patches, trigger tokens, the training model);
- ``pipelines``: what each node does, called alike by nodes, benchmarks and tests;
- ``toyworld``: the demo world (scenes, model, concepts, detector).

Only ``bridge``, ``pipelines`` and ``toyworld`` may import ComfyUI, and only
inside functions: ``tests/unit/test_layers.py`` imports every other layer with
``comfy`` blocked and reads every import statement of theirs;
``tests/unit/test_no_comfy_at_import.py`` imports every module without ComfyUI.
"""
