"""A real ComfyUI, in this process or as a server, for the demo and the tests.

Everything here drives ComfyUI through its public seams: its own argument
parser, ``nodes.init_extra_nodes`` (which loads this pack from
``custom_nodes/`` exactly as a user's install would), ``execution.validate_prompt``
and ``execution.PromptExecutor`` for in-process runs, and ``main.py`` for the
server. Nothing of ComfyUI is imported at module import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMFY_DIR = Path(os.environ.get("OMG_COMFYUI_DIR", REPO / ".comfyui"))
PACK_NAME = "omg"

_imported = False
_nodes_loaded = False


def _outside_event_loop(fn, *args):
    """Call ``fn`` where ``asyncio.run`` works.

    ComfyUI's executor and node loader call ``asyncio.run`` themselves; in a
    thread that already runs an event loop (Playwright's sync API leaves one
    in the main thread) they must run in a thread of their own, as ComfyUI's
    own prompt worker does."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args)
    result: list = []

    def target():
        try:
            result.append((True, fn(*args)))
        except BaseException as e:  # re-raised in the caller's thread
            result.append((False, e))

    thread = threading.Thread(target=target, name="omg-comfy-executor")
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def import_comfy(cpu: bool = True) -> None:
    """Make ComfyUI's modules importable in this process, its arguments parsed
    (on the CPU unless ``cpu=False``); no nodes are loaded. Idempotent."""
    global _imported
    if _imported:
        return
    if not (COMFY_DIR / "main.py").exists():
        raise RuntimeError(f"ComfyUI is not set up in {COMFY_DIR}; run scripts/setup.sh first")
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    saved = sys.argv
    device = ["--cpu"] if cpu else []
    sys.argv = [saved[0], *device, "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses the arguments now)
    finally:
        sys.argv = saved
    # main.py imports ComfyUI's top-level ``utils`` package before ``nodes``,
    # which puts comfy/ (holding a utils.py) first on sys.path.
    import comfy.model_management  # noqa: F401
    import utils.install_util  # noqa: F401

    _imported = True


def _load_nodes() -> None:
    global _nodes_loaded
    if _nodes_loaded:
        return
    import nodes

    # Optional built-in nodes whose extra dependencies (torchaudio, …) are
    # not installed log long tracebacks; they say nothing about this pack.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR if os.environ.get("OMG_VERBOSE") != "1" else level)
    try:
        _outside_event_loop(asyncio.run, nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        root.setLevel(level)
    if PACK_NAME not in {Path(d).name for d in nodes.LOADED_MODULE_DIRS.values()}:
        raise RuntimeError("the OMG pack did not load into ComfyUI; see the log above")
    _nodes_loaded = True


def boot(models_dir: Path | None = None, output_dir: Path | None = None, load_nodes: bool = True, cpu: bool = True):
    """ComfyUI in-process (on the CPU unless ``cpu=False``), with this pack's
    nodes registered when ``load_nodes``, and the given model/output folders."""
    import_comfy(cpu=cpu)
    if load_nodes:
        _load_nodes()
    import folder_paths

    if models_dir is not None:
        folder_paths.add_model_folder_path("checkpoints", str(models_dir / "checkpoints"), is_default=True)
        folder_paths.add_model_folder_path("loras", str(models_dir / "loras"), is_default=True)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        folder_paths.set_output_directory(str(output_dir))


class _Messages:
    """The slice of PromptServer that the executor talks to; the executor keeps
    its own record of what it reported (``status_messages``)."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass


class PromptFailed(RuntimeError):
    pass


class InProcessHost:
    """Runs API-format prompts through ComfyUI's validator and executor."""

    def __init__(self):
        import execution

        self.messages = _Messages()
        # Every cache setting any supported executor reads (0.33 also reads
        # "ram_inactive"); each version ignores the keys it does not know.
        cache_args = {"lru": 0, "ram": 0, "ram_inactive": 0}
        self.executor = execution.PromptExecutor(self.messages, cache_type=False, cache_args=cache_args)

    def run(self, prompt: dict) -> dict:
        import execution

        prompt_id = str(uuid.uuid4())
        valid = _outside_event_loop(asyncio.run, execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            raise PromptFailed(f"prompt invalid: {valid[1]} {json.dumps(valid[3], default=str)[:2000]}")
        _outside_event_loop(self.executor.execute, prompt, prompt_id, {}, valid[2])
        if not self.executor.success:
            errors = [d for e, d in self.executor.status_messages if e == "execution_error"]
            if not errors:
                raise PromptFailed("the prompt failed without an execution error message")
            raise PromptFailed(f"{errors[0]['node_type']}: {errors[0]['exception_message'].strip()}")
        return self.executor.history_result["outputs"]

    def node_outputs(self, node_id: str):
        """The cached Python outputs of a node from the last run."""
        outputs = self.executor.caches.outputs
        # ``get`` became a coroutine in ComfyUI 0.18; ``get_local`` is its synchronous twin.
        lookup = getattr(outputs, "get_local", outputs.get)
        entry = lookup(node_id)
        return None if entry is None else entry.outputs


def temp_directory() -> str:
    import folder_paths

    return folder_paths.get_temp_directory()


def object_info_in_process() -> dict:
    """What ``GET /object_info`` answers, computed in this process.

    ComfyUI builds it in a closure inside its route setup, so this mirrors the
    fields that the workflow conversion and the tests read."""
    import nodes
    from comfy_api.internal import _ComfyNodeInternal

    out = {}
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if issubclass(cls, _ComfyNodeInternal):
            out[name] = cls.GET_NODE_INFO_V1()
            continue
        inputs = cls.INPUT_TYPES()
        out[name] = {
            "input": inputs,
            "input_order": {k: list(v.keys()) for k, v in inputs.items()},
            "output": cls.RETURN_TYPES,
            "name": name,
            "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
            "category": getattr(cls, "CATEGORY", "sd"),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
    return out


# ---------------------------------------------------------------- workflows
def _widget_inputs(info: dict) -> list[tuple[str, bool]]:
    """Inputs that the UI shows as widgets, in order, with whether a
    control_after_generate value follows them in widgets_values."""
    out = []
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                if opts.get("forceInput"):
                    continue
                # The frontend adds a "control after generate" value to seed inputs
                # even when the schema does not ask for one.
                default_control = kind == "INT" and name in ("seed", "noise_seed")
                out.append((name, bool(opts.get("control_after_generate", default_control))))
    return out


def workflow_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow into the API format that /prompt takes.

    The frontend does this when a user presses Queue; the demo and the tests
    do it here so that the same JSON file serves as template and as test input.
    """
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted or bypassed
            continue
        ctype = node["type"]
        if ctype in ("Note", "MarkdownNote", "Reroute"):
            continue
        if ctype not in object_info:
            raise KeyError(f"workflow names node type {ctype!r}, which this ComfyUI does not have")
        info = object_info[ctype]
        inputs: dict = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            inputs.update(node["widgets_values"])
        else:
            i = 0
            for name, has_control in _widget_inputs(info):
                if i >= len(values):
                    break
                inputs[name] = values[i]
                i += 2 if has_control else 1
        for inp in node.get("inputs", []):
            link_id = inp.get("link")
            if link_id is None:
                continue
            link = links[link_id]
            inputs[inp["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": ctype, "inputs": inputs}
    return prompt


# ---------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base_directory(base: Path, checkpoints: list[Path] = (), loras: list[Path] = ()) -> Path:
    """A ComfyUI --base-directory with this pack in custom_nodes and the given models."""
    for sub in ("custom_nodes", "models/checkpoints", "models/loras", "input", "output", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    for src, folder in [(p, "checkpoints") for p in checkpoints] + [(p, "loras") for p in loras]:
        dst = base / "models" / folder / Path(src).name
        if not dst.exists():
            dst.symlink_to(Path(src).resolve())
    return base


class ServerHost:
    """``python main.py`` on a free loopback port; stops itself on exit."""

    def __init__(self, base_dir: Path, port: int | None = None, extra_args: list[str] = ()):
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui.log"

    def start(self, timeout: float = 180.0) -> ServerHost:
        cmd = [
            sys.executable,
            str(COMFY_DIR / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base_dir),
            *self.extra_args,
        ]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(COMFY_DIR), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early; log:\n{self.log_path.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                self.get("/system_stats", timeout=2)
                return self
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s; log:\n{self.log_path.read_text()[-4000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, payload, timeout: float = 30):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def run_prompt(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format prompt and wait for its history entry."""
        import urllib.error

        try:
            queued = self.post("/prompt", {"prompt": prompt, "client_id": "omg-tests"})
        except urllib.error.HTTPError as e:
            raise PromptFailed(e.read().decode()[:4000]) from e
        pid = queued["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist:
                entry = hist[pid]
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    raise PromptFailed(json.dumps(msgs, default=str)[:4000])
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {pid} did not finish within {timeout}s")
