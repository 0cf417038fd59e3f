"""ComfyUI's own web UI, driven headless: the harness behind the browser tests (``tests/test_browser.py``).

* :class:`ComfyServer` starts ``main.py --cpu`` as a subprocess on a free local port, with a private base directory:
  only this pack in its ``custom_nodes`` (a symlink, as a user's clone would be), the tiny checkpoint in
  ``models/checkpoints`` and settings that skip the first-run template browser.
* :class:`Frontend` opens the served frontend in headless Chromium (Playwright, the system's ``chromium``) and
  talks to it the way an artist does: load a UI-format workflow (as dropping the file on the canvas does), read the
  dialogs that appear, queue the prompt with the frontend's own ``queuePrompt`` and wait for the run to finish,
  read what is drawn on the canvas, take screenshots. Every WebSocket message the page receives is kept in
  :attr:`Frontend.messages` (progress events, ``executed`` UI outputs, errors).

:func:`browser_unavailable` says in one line why the tier cannot run here (no Chromium, no Playwright, no ComfyUI).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from headless import NO_COMFYUI, PACK_NAME, REPO_ROOT, find_comfyui

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
#: what a first-time user would otherwise see first (the template browser) is skipped
SETTINGS = {"Comfy.TutorialCompleted": True}


def chromium_path() -> str | None:
    env = os.environ.get("CHROMIUM_PATH")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in CHROMIUM_CANDIDATES if Path(p).is_file()), None) or shutil.which("chromium")


def browser_unavailable() -> str | None:
    """None when the browser tier can run; otherwise the one-line reason it cannot."""
    if chromium_path() is None:
        return "needs Chromium (apt-get install chromium, or set CHROMIUM_PATH)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs Playwright for Python (pip install playwright; the system's Chromium is used)"
    if find_comfyui() is None:
        return NO_COMFYUI
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``main.py --cpu`` on 127.0.0.1 with a private base directory; use as a context manager."""

    def __init__(self, base_dir: Path, comfy_path: Path | None = None, checkpoints: dict[str, Path] | None = None,
                 python: str = sys.executable, threads: int = 0, tiny_dit: bool = False):
        self.threads = threads                       # > 0: the server's torch CPU threads (OMP_NUM_THREADS)
        self.comfy_path = Path(comfy_path or find_comfyui())
        self.base_dir = Path(base_dir)
        for sub in ("custom_nodes", "models/checkpoints", "output", "input", "temp", "user/default"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
        if tiny_dit:                                 # the development loader of tiny DiTs (scripts/tiny_dit.py)
            import tiny_dit as tiny_dit_module

            dev = self.base_dir / "custom_nodes" / "attention_align_dev_tiny_dit"
            dev.mkdir(exist_ok=True)
            (dev / "__init__.py").write_text(tiny_dit_module.SERVER_PACKAGE.format(scripts=str(REPO_ROOT / "scripts")))
        for name, path in (checkpoints or {}).items():
            target = self.base_dir / "models" / "checkpoints" / name
            if not target.exists():
                target.symlink_to(Path(path).resolve())
        (self.base_dir / "user" / "default" / "comfy.settings.json").write_text(json.dumps(SETTINGS))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python, self.proc, self.log_path = python, None, self.base_dir / "server.log"

    def start(self, timeout: float = 180) -> ComfyServer:
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [self.python, str(self.comfy_path / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base_dir), "--disable-auto-launch", "--preview-method", "none"],
            cwd=self.comfy_path, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": str(self.threads)} if self.threads > 0 else None)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(self.url + "/system_stats", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:]) if self.log_path.exists() else ""

    def get(self, path: str):
        return json.loads(urllib.request.urlopen(self.url + path, timeout=30).read())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def tiny_variant(workflow: dict, ckpt: str, size: int = 64, steps: int | None = None) -> dict:
    """A copy of a UI-format workflow that runs on the tiny checkpoint: every checkpoint widget set to ``ckpt``,
    every empty latent ``size`` px, every sampler's ``steps`` (widget order of the stock nodes and the pack's)."""
    wf = json.loads(json.dumps(workflow))
    for node in wf["nodes"]:
        values = node.get("widgets_values")
        if node["type"] == "CheckpointLoaderSimple":
            values[0] = ckpt
        elif node["type"] == "EmptyLatentImage":
            values[0] = values[1] = size
        elif steps is not None and node["type"] in ("KSampler", "AttentionAlignGuidedKSampler"):
            values[2] = steps          # seed, control_after_generate, steps, …
    return wf


class Frontend:
    """One headless Chromium page on the server's frontend. Use as a context manager."""

    def __init__(self, server: ComfyServer, viewport: tuple[int, int] = (1280, 720)):
        self.server, self.viewport = server, viewport
        self.messages: list[dict] = []
        self._pw = self._browser = self.page = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def open(self, timeout: float = 120) -> Frontend:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        self.page = self._browser.new_page(viewport={"width": self.viewport[0], "height": self.viewport[1]})
        self.page.on("websocket", self._watch)
        self.page.goto(self.server.url, timeout=timeout * 1000)
        self.page.wait_for_function("() => window.app && window.app.graph && window.app.canvas && "
                                    "window.LiteGraph && document.querySelector('canvas')",
                                    timeout=timeout * 1000)
        self.page.wait_for_timeout(1000)
        return self

    def _watch(self, ws) -> None:
        def on_frame(payload):
            if isinstance(payload, str):
                try:
                    self.messages.append(json.loads(payload))
                except ValueError:
                    pass
        ws.on("framereceived", on_frame)

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._pw is not None:
            self._pw.stop()

    def __enter__(self) -> Frontend:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what an artist does -----------------------------------------------------------------------------------
    def load(self, workflow: dict) -> None:
        """Load a UI-format workflow as dropping its file on the canvas does (the view saved in it is restored)."""
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(wf, true, true, 'test'); }", workflow)
        self.page.wait_for_timeout(800)
        self.page.evaluate("() => window.app.canvas.draw(true, true)")

    def dialogs(self) -> list[str]:
        """The text of every dialog open on the page (e.g. ComfyUI's missing-nodes or error dialog)."""
        return self.page.evaluate("() => [...document.querySelectorAll('.p-dialog')]"
                                  ".filter(d => d.offsetParent !== null).map(d => d.innerText)")

    def queue(self, timeout: float = 300) -> str:
        """Queue the loaded graph with the frontend's own queuePrompt; wait until ComfyUI finished it (or raise with
        the execution error). Returns the prompt id."""
        start = len(self.messages)
        self.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        deadline = time.time() + timeout
        while time.time() < deadline:
            for msg in self.messages[start:]:
                kind, data = msg.get("type"), msg.get("data") or {}
                if kind == "execution_error":
                    raise RuntimeError(f"node {data.get('node_id')} ({data.get('node_type')}): "
                                       f"{data.get('exception_message')}")
                if kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                                   and data.get("prompt_id")):
                    self.page.wait_for_timeout(500)
                    return data["prompt_id"]
            self.page.wait_for_timeout(250)
        raise TimeoutError(f"the prompt did not finish within {timeout:.0f} s:\n{self.server.log_tail()}")

    def events(self, kind: str, prompt_id: str | None = None) -> list[dict]:
        """The ``data`` of every WebSocket message of ``kind`` (of one prompt when given), in arrival order."""
        return [m["data"] for m in self.messages if m.get("type") == kind
                and (prompt_id is None or (m.get("data") or {}).get("prompt_id") == prompt_id)]

    # -- what is on the canvas ---------------------------------------------------------------------------------
    def nodes(self) -> list[dict]:
        """Every node as drawn: id, type, title, bounding box [x, y, w, h] in canvas units (title bar included),
        widget names and values, the title's drawn width against the room the title bar leaves for it."""
        return self.page.evaluate("""() => {
            const app = window.app, ctx = app.canvas.ctx;
            ctx.save(); ctx.font = app.canvas.title_text_font || (window.LiteGraph.NODE_TEXT_SIZE + 'px Arial');
            const out = app.graph.nodes.map(n => {
                const b = n.getBounding ? Array.from(n.getBounding()) : [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30];
                const badges = (n.badges || []).map(b => typeof b === 'function' ? b() : b);
                const badgeText = badges.map(b => b && b.text).filter(Boolean);
                const badgeW = badges.reduce((s, b) => s + (b && b.getWidth ? b.getWidth(ctx) + 5 : 0), 0);
                return {id: n.id, type: n.type, title: n.title, bbox: b, size: Array.from(n.size),
                        widgets: (n.widgets || []).map(w => ({name: w.name, type: w.type, value: w.value})),
                        titleWidth: ctx.measureText(n.title).width, badges: badgeText,
                        titleRoom: n.size[0] - window.LiteGraph.NODE_TITLE_HEIGHT - badgeW - 10};
            });
            ctx.restore();
            return out;
        }""")

    def view(self) -> dict:
        """The canvas view: scale, offset, whether LiteGraph draws in low quality (no node text) at this zoom, and
        the visible area in canvas units."""
        return self.page.evaluate("""() => { const c = window.app.canvas;
            return {scale: c.ds.scale, offset: Array.from(c.ds.offset), low_quality: !!c.low_quality,
                    visible: Array.from(c.visible_area || [])}; }""")

    def screenshot(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.evaluate("() => window.app.canvas.draw(true, true)")
        self.page.wait_for_timeout(300)
        self.page.screenshot(path=str(path))
        return path


def overlaps(nodes: list[dict]) -> list[tuple[str, str, float, float]]:
    """Pairs of nodes whose boxes intersect: (title, title, width, height) of the intersection."""
    found = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ax, ay, aw, ah = a["bbox"]
            bx, by, bw, bh = b["bbox"]
            w, h = min(ax + aw, bx + bw) - max(ax, bx), min(ay + ah, by + bh) - max(ay, by)
            if w > 0 and h > 0:
                found.append((a["title"], b["title"], round(w), round(h)))
    return found
