"""Shared fixtures: a real ComfyUI in-process, small real-architecture models.

``tests/unit`` needs none of this (pure ``omg_core``); the other layers boot
ComfyUI once per session. Models are generated on first use and cached under
``.cache/`` (see ``omg_core.toyworld.tiny_checkpoints``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Appended, not prepended: the pack's ``nodes/`` folder must never shadow
# ComfyUI's ``nodes`` module.
for p in (REPO / "scripts", REPO):
    if str(p) not in sys.path:
        sys.path.append(str(p))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``),
    its module-scoped fixtures included:
    small SVDs, solves and training steps on a shared CPU, where a second thread
    mostly waits on the first; results are then independent of the core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sd15_checkpoint() -> Path:
    import comfy_host
    from omg_core.toyworld.tiny_checkpoints import tiny_checkpoint

    comfy_host.import_comfy()  # the builder uses ComfyUI's own model classes

    return tiny_checkpoint("sd15")


@pytest.fixture(scope="session")
def comfy_models_dir(tmp_path_factory, sd15_checkpoint) -> Path:
    """A models folder as ComfyUI sees it: what the demo and the example workflows use
    (``omg-tiny-sd15.safetensors``, the toy world's checkpoint and concepts) and
    ``loras/omg-test-{cat,dog,mug}.safetensors``, concepts for the tiny checkpoint."""
    import demo_assets
    from tiny_concepts import write_tiny_concepts

    root = tmp_path_factory.mktemp("models")
    demo_assets.ensure_demo_models(root)
    write_tiny_concepts(root / "loras", sd15_checkpoint)
    return root


@pytest.fixture(scope="session")
def comfy(comfy_models_dir, tmp_path_factory):
    """ComfyUI booted in this process (CPU) with the pack's nodes registered."""
    import comfy_host

    comfy_host.boot(models_dir=comfy_models_dir, output_dir=tmp_path_factory.mktemp("output"))
    import nodes

    return nodes


@pytest.fixture(scope="session")
def host(comfy):
    """Runs API-format prompts through ComfyUI's own validator and executor."""
    import comfy_host

    return comfy_host.InProcessHost()


@pytest.fixture(scope="session")
def object_info(comfy):
    import comfy_host

    return comfy_host.object_info_in_process()


@pytest.fixture(scope="session")
def sd15(comfy, sd15_checkpoint):
    """(MODEL, CLIP, VAE) of the tiny SD1.5 checkpoint, loaded by ComfyUI.

    Session-scoped like a checkpoint a user loaded once: tests must clone,
    never mutate — which is also what the pack promises."""
    import comfy.sd
    import folder_paths

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(sd15_checkpoint), embedding_directory=folder_paths.get_folder_paths("embeddings")
    )
    return model, clip, vae


@pytest.fixture(scope="session")
def sdxl_inprocess(comfy):
    """A small model of ComfyUI's real SDXL class (6.7 M parameters), wrapped in
    a ModelPatcher; SDXL-family checkpoints of detectable size are ~3 GB."""
    from omg_core.toyworld.tiny_checkpoints import build_sdxl_inprocess

    return build_sdxl_inprocess(seed=0)


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (multi-GB checkpoints) run only with OMG_SLOW=1."""
    import os

    if os.environ.get("OMG_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set OMG_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
