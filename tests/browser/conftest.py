"""A real ComfyUI server and a real Chromium for the web widget tests.

The server runs ``main.py`` on a free loopback port with the pack in its
``custom_nodes`` and the demo models in its ``models``; Chromium is Debian's
(``/usr/bin/chromium``) driven by Playwright. Both are started once per session;
each test gets a fresh page (and browser context) so settings such as the Vue
node renderer take effect from the first paint.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import demo_assets
import pytest

import comfy_host

CHROMIUM = os.environ.get("OMG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory) -> Iterator[comfy_host.ServerHost]:
    base = comfy_host.prepare_base_directory(tmp_path_factory.mktemp("comfy-browser"))
    demo_assets.ensure_demo_models(base / "models")
    # OMG_FRONTEND_ROOT serves another frontend build (the test matrix's newest one).
    frontend = os.environ.get("OMG_FRONTEND_ROOT")
    extra = ["--front-end-root", frontend] if frontend else []
    host = comfy_host.ServerHost(base, port=comfy_host.free_port(), extra_args=extra)
    host.start()
    # No first-run template gallery or minimap over the canvas.
    host.post("/settings/Comfy.TutorialCompleted", True)
    host.post("/settings/Comfy.Minimap.Visible", False)
    yield host
    host.stop()


@pytest.fixture(scope="session")
def chromium():
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}; scripts/setup.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright gives every launch a fresh temporary profile (user data dir).
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
