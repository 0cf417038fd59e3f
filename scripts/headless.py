"""Run ComfyUI headless, in-process, with this pack installed: the harness behind the tests and the demo runner.

* :func:`find_comfyui` finds a checkout: ``$COMFYUI_PATH``, else the ComfyUI this repository sits in
  (``ComfyUI/custom_nodes/<pack>``), else the one ``scripts/setup_env.sh`` builds in ``.host/ComfyUI`` when it finds
  none, else ``~/ComfyUI``; :func:`require_comfyui` is the same, or exits with :data:`NO_COMFYUI`.
* :class:`ComfyHost` boots it (on the CPU unless told otherwise) with a private base directory (``--base-directory``): only this pack is in
  its ``custom_nodes`` (as a symlink, as a user's clone would be), models come from ``<base>/models``. One host per
  process: ComfyUI keeps global state.
* :func:`pack` imports the pack itself without ComfyUI, as the package ``attention_align`` (its ComfyUI-free modules:
  ``guidance``, ``nodes.registry``, …): the one way scripts, benchmarks and tests import it. Importing this module
  also makes the repository's ``toy`` package importable.
* :meth:`ComfyHost.run` executes an API-format prompt with ComfyUI's own ``PromptExecutor`` and returns every
  node's raw outputs; :func:`ui_to_api` converts a UI-format workflow (what the frontend saves) to API format the
  way the frontend does when it queues a prompt.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import logging
import os
import sys
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "attention-align"   # the install folder; the frontend's node badge shows it
#: where scripts/setup_env.sh builds ComfyUI when no checkout is found, inside the repository (git-ignored)
BUILT_HOST = Path(".host", "ComfyUI")
NO_COMFYUI = ("no ComfyUI found: run scripts/setup_env.sh (it builds ComfyUI 0.3.64 in .host/ComfyUI), or set "
              "COMFYUI_PATH to a ComfyUI checkout")
PACKAGE = "attention_align"
if str(REPO_ROOT) not in sys.path:                # the repository's toy package (toy.scenes, toy.judge, …)
    sys.path.append(str(REPO_ROOT))


def pack(name: str = ""):
    """The pack as the package ``attention_align`` (registered once, from this repository, without ComfyUI), or its
    module ``name`` (``"nodes.registry"``, ``"guidance.maps"``). Modules that import ComfyUI need :class:`ComfyHost`
    (:meth:`ComfyHost.pack_module`) instead."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, REPO_ROOT / "__init__.py",
                                                      submodule_search_locations=[str(REPO_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACKAGE}.{name}") if name else sys.modules[PACKAGE]


def find_comfyui(repo_root: Path = REPO_ROOT) -> Path | None:
    """The ComfyUI checkout to use, or None. Order: $COMFYUI_PATH, the custom_nodes layout, the host that
    scripts/setup_env.sh built in ``<repo>/.host/ComfyUI``, ~/ComfyUI. A $COMFYUI_PATH that is not a checkout is an
    error, never passed over."""
    def is_checkout(p: Path) -> bool:
        return (p / "main.py").is_file() and (p / "comfy").is_dir() and (p / "nodes.py").is_file()

    env = os.environ.get("COMFYUI_PATH")
    if env:
        p = Path(env).expanduser().resolve()
        if not is_checkout(p):
            raise FileNotFoundError(f"COMFYUI_PATH={env} is not a ComfyUI checkout (no main.py, nodes.py and comfy/)")
        return p
    if repo_root.parent.name == "custom_nodes" and is_checkout(repo_root.parent.parent):
        return repo_root.parent.parent
    if is_checkout(repo_root / BUILT_HOST):
        return repo_root / BUILT_HOST
    home = Path("~/ComfyUI").expanduser()
    return home if is_checkout(home) else None


def require_comfyui() -> Path:
    """:func:`find_comfyui`, or exit with :data:`NO_COMFYUI` (what the scripts, the benchmarks and toy.train need)."""
    path = find_comfyui()
    if path is None:
        raise SystemExit(NO_COMFYUI)
    return path


class ExecutionFailed(RuntimeError):
    """A prompt failed in ComfyUI; ``node_type`` and ``exception_message`` say where and why."""

    def __init__(self, node_id: str, node_type: str, exception_type: str, message: str, traceback_text: str):
        super().__init__(f"node {node_id} ({node_type}) raised {exception_type}: {message}\n{traceback_text}")
        self.node_id, self.node_type, self.exception_type, self.exception_message = node_id, node_type, exception_type, message


class _Server:
    """The little of server.PromptServer that PromptExecutor uses."""
    client_id = None
    last_node_id = None
    last_prompt_id = None
    #: optional ``listener(event, data)`` that sees every event the executor sends (e.g. "executing")
    listener = None

    def send_sync(self, event, data, sid=None):
        if self.listener is not None:
            self.listener(event, data)


class ComfyHost:
    """ComfyUI booted in this process with only this pack in ``custom_nodes``."""

    _instance: ComfyHost | None = None

    def __init__(self, comfy_path: Path, base_dir: Path, pack_dir: Path = REPO_ROOT, cpu: bool = True):
        if ComfyHost._instance is not None:
            raise RuntimeError("ComfyUI can be booted once per process; use ComfyHost.instance")
        ComfyHost._instance = self
        self.comfy_path, self.base_dir = Path(comfy_path), Path(base_dir)
        for sub in ("custom_nodes", "models/checkpoints", "output", "input", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(Path(pack_dir).resolve(), target_is_directory=True)
        self.pack_path = str(link)

        if str(self.comfy_path) not in sys.path:
            sys.path.insert(0, str(self.comfy_path))
        from comfy.cli_args import args
        args.cpu = cpu
        args.base_directory = str(self.base_dir)
        args.disable_auto_launch = True
        # The order matters: ComfyUI's own utils package first (nodes.py shadows it with comfy/utils).
        # isort: off
        import utils.install_util  # noqa: F401
        import utils.extra_config  # noqa: F401
        import comfy.utils
        import execution
        import folder_paths  # noqa: F401
        import nodes
        # isort: on

        comfy.utils.PROGRESS_BAR_ENABLED = False
        self.nodes, self.execution = nodes, execution
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        self.executor = execution.PromptExecutor(_Server(), cache_type=execution.CacheType.CLASSIC)

    @classmethod
    def instance(cls, comfy_path: Path, base_dir: Path) -> ComfyHost:
        return cls._instance if cls._instance is not None else cls(comfy_path, base_dir)

    # -- the pack as ComfyUI loaded it ------------------------------------------------------------
    def pack_module(self, name: str = ""):
        """A module of the pack as ComfyUI imported it (``"guidance.maps"``, ``"nodes"``, or ``""`` for the root)."""
        root = self.pack_path.replace(".", "_x_")  # ComfyUI names a package after its path, dots escaped
        return importlib.import_module(f"{root}.{name}") if name else sys.modules[root]

    def node_class(self, class_type: str):
        return self.nodes.NODE_CLASS_MAPPINGS[class_type]

    def checkpoint_path(self, name: str) -> Path:
        return self.base_dir / "models" / "checkpoints" / name

    # -- running ------------------------------------------------------------------------------------
    def run(self, prompt: dict, fresh: bool = False, workflow: dict | None = None) -> dict:
        """Validate and execute an API-format prompt; returns ``{node_id: [output_0, output_1, …]}``.

        Raises :class:`ExecutionFailed` with the node's exception message if a node fails, and ``ValueError`` if
        ComfyUI's validation rejects the prompt. ``fresh`` drops ComfyUI's output cache first. ``workflow`` (the
        UI-format graph the prompt came from) is embedded in saved PNGs next to the prompt, as the frontend does.
        """
        if fresh:
            self.executor.reset()
        pid = str(uuid.uuid4())
        leaves = self._leaves(prompt)
        # ComfyUI validates and runs only what output nodes need; tests also read nodes that feed nothing, so
        # validation sees a core PreviewAny sink on each such leaf, and those leaves are executed as targets.
        checked = dict(prompt)
        for nid in leaves:
            checked[f"sink_{nid}"] = {"class_type": "PreviewAny", "inputs": {"source": [nid, 0]}}
        valid = asyncio.run(self.execution.validate_prompt(pid, checked, None))
        if not valid[0]:
            raise ValueError(f"ComfyUI rejected the prompt: {json.dumps(valid[1])} {json.dumps(valid[3], default=str)}")
        targets = [nid for nid in valid[2] if nid in prompt] + leaves
        extra = {"extra_pnginfo": {"workflow": workflow}} if workflow is not None else {}
        if self.executor.server.listener is not None:
            extra["client_id"] = "headless"        # the executor sends "executing" events only when a client listens
        self.executor.execute(prompt, pid, extra, targets)
        if not self.executor.success:
            for event, data in self.executor.status_messages:
                if event == "execution_error":
                    raise ExecutionFailed(data["node_id"], data["node_type"], data["exception_type"],
                                          data["exception_message"], "".join(data.get("traceback", [])))
            raise RuntimeError(f"prompt failed: {self.executor.status_messages}")
        out = {}
        for node_id in prompt:
            cached = self.executor.caches.outputs.get(node_id)
            if cached is not None:
                out[node_id] = [slot[0] if isinstance(slot, list) and len(slot) == 1 else slot
                                for slot in (cached.outputs if hasattr(cached, "outputs") else cached)]
        self.ui_outputs = self.executor.history_result["outputs"]
        return out

    def _leaves(self, prompt: dict) -> list[str]:
        """Non-output nodes with outputs that no other node consumes."""
        consumed = {v[0] for node in prompt.values() for v in node["inputs"].values()
                    if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)}
        leaves = []
        for nid, node in prompt.items():
            cls = self.node_class(node["class_type"])
            if nid not in consumed and cls.RETURN_TYPES and not getattr(cls, "OUTPUT_NODE", False):
                leaves.append(nid)
        return leaves

    def input_order(self, class_type: str) -> list[tuple[str, tuple]]:
        """The node's inputs in schema order: ``[(name, (type, options)), …]`` over required then optional."""
        spec = self.node_class(class_type).INPUT_TYPES()
        order = []
        for section in ("required", "optional"):
            for name, value in (spec.get(section) or {}).items():
                order.append((name, value if isinstance(value, tuple) else tuple(value)))
        return order

    def widget_defaults(self, class_type: str) -> dict:
        """Every widget input of the node (required and optional) at its schema default (a list's first option
        where it has none): a node's official configuration, for the pack's method nodes."""
        out = {}
        for name, spec in self.input_order(class_type):
            if _is_widget(spec):
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                out[name] = opts.get("default", spec[0][0] if isinstance(spec[0], list) else None)
        return out


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _is_widget(spec: tuple) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec: tuple) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(opts.get("control_after_generate")) or (name in ("seed", "noise_seed") and spec[0] == "INT")


def widget_slots(host: ComfyHost, class_type: str) -> tuple[dict[str, int], int]:
    """``({input name: index in widgets_values}, length of widgets_values)`` for a node type, as the frontend stores
    them: schema order, one extra entry (e.g. ``"fixed"``) after every seed widget with a control-after-generate
    menu."""
    slots, pos = {}, 0
    for name, spec in host.input_order(class_type):
        if _is_widget(spec):
            slots[name] = pos
            pos += 2 if _has_control_widget(name, spec) else 1
    return slots, pos


def ui_to_api(workflow: dict, host: ComfyHost) -> dict:
    """Convert a UI-format workflow to an API prompt, as the frontend's graphToPrompt does.

    Widget values are positional (``widgets_values``) in schema order of the widget inputs, with one extra entry
    (e.g. ``"fixed"``) after every seed widget that has a control-after-generate menu. Links come from the workflow's
    ``links`` table. Muted/bypassed nodes and notes are not supported here and raise.
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        if node["type"] in ("Note", "MarkdownNote"):
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} ({node['type']}) is muted or bypassed; not supported here")
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, object] = {}
        slots, expected = widget_slots(host, node["type"])
        for name, pos in slots.items():
            if pos >= len(values):
                raise ValueError(f"node {node['id']} ({node['type']}): widgets_values has no value for '{name}'")
            inputs[name] = values[pos]
        if expected != len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values, {expected} expected")
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def api_to_ui(prompt: dict, host: ComfyHost, positions: dict[str, tuple[int, int]] | None = None,
              sizes: dict[str, tuple[int, int]] | None = None, view: dict | None = None) -> dict:
    """Build a UI-format workflow (format version 0.4) from an API prompt.

    Every linked input becomes a socket entry; widget values are written positionally (with ``"fixed"`` after
    seed widgets). Output slots are typed from the node classes. ``sizes`` are minimum node sizes (the frontend
    enlarges a node to fit its widgets, never shrinks it; default 320×160); ``view`` (``{"scale", "offset"}``) is
    the canvas view the frontend restores on loading.
    """
    positions, sizes = positions or {}, sizes or {}
    ids = {nid: int(nid) for nid in prompt}
    links: list[list] = []
    out_links: dict[tuple[int, int], list[int]] = {}
    nodes_ui = []
    for order_idx, (nid, node) in enumerate(prompt.items()):
        cls = host.node_class(node["class_type"])
        in_slots, values = [], []
        for name, spec in host.input_order(node["class_type"]):
            value = node["inputs"].get(name)
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                src, src_slot = ids[value[0]], value[1]
                link_id = len(links) + 1
                src_type = host.node_class(prompt[value[0]]["class_type"]).RETURN_TYPES[src_slot]
                links.append([link_id, src, src_slot, ids[nid], len(in_slots), src_type])
                out_links.setdefault((src, src_slot), []).append(link_id)
                entry = {"name": name, "type": spec[0] if not isinstance(spec[0], list) else "COMBO", "link": link_id}
                if _is_widget(spec):
                    entry["widget"] = {"name": name}
                in_slots.append(entry)
            elif not _is_widget(spec):
                if value is not None:
                    raise ValueError(f"node {nid}: socket input '{name}' must be a link")
                opts = spec[1] if len(spec) > 1 else {}
                in_slots.append({"name": name, "type": spec[0], "link": None, **({"shape": 7} if opts.get("optional") else {})})
            if _is_widget(spec):
                if value is None or (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
                    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                    default = opts.get("default", spec[0][0] if isinstance(spec[0], list) else None)
                    values.append(default)
                else:
                    values.append(value)
                if _has_control_widget(name, spec):
                    values.append("fixed")
        x, y = positions.get(nid, (100 + 340 * order_idx, 100))
        nodes_ui.append({
            "id": ids[nid], "type": node["class_type"], "pos": [x, y], "size": list(sizes.get(nid, (320, 160))),
            "flags": {},
            "order": order_idx, "mode": 0, "inputs": in_slots,
            "outputs": [{"name": n, "type": t, "links": None, "slot_index": i}
                        for i, (t, n) in enumerate(zip(cls.RETURN_TYPES, getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES))],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": values,
        })
    for n in nodes_ui:
        for o in n["outputs"]:
            o["links"] = out_links.get((n["id"], o["slot_index"]), [])
    return {"last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": nodes_ui, "links": links,
            "groups": [], "config": {}, "extra": {"ds": view} if view else {}, "version": 0.4}


def quiet_logging() -> None:
    logging.getLogger().setLevel(logging.WARNING)


if __name__ == "__main__":
    if sys.argv[1:] == ["--find"]:
        found = find_comfyui()
        print(found if found is not None else "")
    else:
        sys.exit("usage: headless.py --find   (prints the ComfyUI checkout the tests will use, or nothing)")
