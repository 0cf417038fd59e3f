"""Compare methods on a prompt set — in this process, or sharded over any number of ComfyUI servers.

    .venv/bin/python scripts/compare.py --prompts builtin:toy --methods scripts/compare_methods.json \\
        --seeds 0,1 --out out/compare                                   # in-process, on the toy model
    .venv/bin/python scripts/compare.py --prompts color_val.txt --methods my_methods.yaml --seeds 0-3 \\
        --workflow example_workflows/attend_and_excite_sd15.json \\
        --servers http://gpu1:8188,http://gpu2:8188 --out out/compbench   # many servers

ComfyUI's own HTTP API is the engine: every job (prompt, seed, method) becomes an API prompt built from a workflow
template, is queued with ``POST /prompt``, followed on ``/history`` and its image fetched with ``/view``. Without
``--servers`` the same prompts run in this process on ComfyUI's executor (the pack's toy model by default).

* **Template**: any UI- or API-format workflow with one Guided KSampler, or Apply Guidance feeding a sampler,
  whose ``guidance`` comes from one of the pack's method nodes, and a Text Self-Attention node for the prompt. Per
  job the runner sets the prompt text, the seed (on every ``seed``/``noise_seed``), batch size 1, swaps the method
  node for the job's method (inputs: the node's defaults, then the template node's values of the same name — e.g.
  ``level`` — then the configuration's), replaces the template's output nodes by a Save Image and an Attention
  Report (the run's metrics and loss per step). ``unguided`` samples the same graph with the stock KSampler.
* **Methods** (JSON or YAML): a list of ``{"name": …, "method": "tsam" | "attend_excite" | "syngen" |
  "attention_regulation" | "attention_modulation" | "unguided", "inputs": {…}, "strength": …}``. Word inputs
  (subjects, groups, targets, entities) come from the prompt set's structure when it has some, else the automatic
  mode. Unknown methods and inputs, values outside a node's range and combo values it does not offer are refused
  before any job runs.
* **Resumable**: ``manifest.jsonl`` in ``--out`` records every finished job (image path, metrics, server, time).
  The same command after a crash or Ctrl-C runs only the missing jobs; an image is written under its final name
  only once complete, so nothing is duplicated or lost. Jobs recorded as failed are tried again.
* **Servers**: checked first (``/object_info``: every node the jobs need, the template's checkpoint in the
  loader's list); then one worker per server takes jobs from a shared queue. A server that stops answering is
  dropped and its job goes back to the queue for the others; a job whose run fails is retried elsewhere, at most
  ``--retries`` times, then recorded as failed with the server's error. The progress bar shows the ETA and each
  server's images per minute. The same seed gives the same image whichever server ran it.
* **Outputs** (``--out``): ``images/<method>/<prompt>_<seed>.png``; T2I-CompBench's layout
  ``t2i_compbench/<method>/samples/<prompt text>_<000000>.png``; GenEval's ``geneval/<method>/<00000>/
  {metadata.jsonl, samples/0000.png}`` (their official scorers can run on a GPU elsewhere); ``results.csv`` (one row
  per image: loss first/last, weakest-subject attention, modifier–noun overlap, noun separation, T–S distance,
  the toy judge's scores on the toy model, seconds); ``report.html`` (self-contained: summary with 95 % intervals
  over prompts, image grids per method at the same seed, loss curves and metric plots).

N GPUs: start one ComfyUI per GPU (``python main.py --listen 0.0.0.0 --port 8188 --cuda-device 0``, port 8189 with
``--cuda-device 1``, …) and pass every URL to ``--servers``. On SLURM, run the servers as an array job (one per
GPU node) and this script once with their URLs; or run this script as an array itself, each task with
``--shard K/N`` on its own server and the same ``--out`` on a shared file system (each shard keeps its own
manifest file, ``manifest-K.jsonl``; reports read them all).
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))                  # stats.py

from headless import pack  # noqa: E402
from prompt_sets import PromptItem, PromptSetError, read_prompt_set  # noqa: E402

REGISTRY = pack("nodes.registry")
#: the methods a workflow's method node can be swapped for (those that read the prompt's Text Self-Attention)
METHOD_NODES = {m.key: m.node.node_id for m in REGISTRY.METHODS if m.text_attention}
#: node id → (the input that takes the prompt's words, the prompt-set field that fills it)
WORD_INPUTS = {m.node.node_id: (m.word_input, m.word_field) for m in REGISTRY.METHODS if m.word_input}
GUIDED = {"AttentionAlignGuidedKSampler", "AttentionAlignApplyGuidance"}
SAMPLERS = {"KSampler", "KSamplerAdvanced", "AttentionAlignGuidedKSampler"}
DEFAULT_TOY_WORKFLOW = ROOT / "example_workflows" / "attend_and_excite_toy.json"
METRICS = ["loss_first", "loss_last", "weakest_subject_attention", "modifier_noun_overlap", "noun_separation",
           "ts_distance"]


class CompareError(ValueError):
    """Bad input found before any job runs; the message names the input, the value and what is allowed."""


# ------------------------------------------------------------------------------------------ method configs
@dataclass(frozen=True)
class MethodConfig:
    name: str
    method: str                              # a key of METHOD_NODES, or "unguided"
    inputs: dict = field(default_factory=dict)

    @property
    def node(self) -> str | None:
        return METHOD_NODES.get(self.method)


def read_configs(path: str) -> list[MethodConfig]:
    p = Path(path)
    if not p.is_file():
        raise CompareError(f"--methods: {path} is not a file (a JSON or YAML list of method configurations)")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else _yaml(text)
    except Exception as exc:  # noqa: BLE001
        raise CompareError(f"--methods: {path} does not parse as {'JSON' if p.suffix == '.json' else 'YAML'}: "
                           f"{exc}") from exc
    if not isinstance(data, list) or not data:
        raise CompareError(f"--methods: {path} must hold a non-empty list of {{method, name?, inputs?, strength?}}")
    configs, names = [], set()
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "method" not in entry:
            raise CompareError(f"--methods: entry {i} of {path} is {entry!r}; each entry needs a 'method'")
        method = entry["method"]
        if method != "unguided" and method not in METHOD_NODES:
            raise CompareError(f"--methods: entry {i}: unknown method '{method}'; use one of unguided, "
                               f"{', '.join(METHOD_NODES)}")
        extra = sorted(set(entry) - {"method", "name", "inputs", "strength"})
        if extra:
            raise CompareError(f"--methods: entry {i}: unknown keys {extra}; allowed: method, name, inputs, strength")
        inputs = dict(entry.get("inputs") or {})
        if "strength" in entry:
            inputs["strength"] = entry["strength"]
        if method == "unguided" and inputs:
            raise CompareError(f"--methods: entry {i}: 'unguided' takes no inputs, got {sorted(inputs)}")
        name = str(entry.get("name") or method)
        if not re.fullmatch(r"[\w.@+-]+", name) or name in names:
            raise CompareError(f"--methods: entry {i}: name '{name}' must be unique and use letters, digits, "
                               "'_', '-', '.', '@', '+' only (it names output folders)")
        names.add(name)
        configs.append(MethodConfig(name, method, inputs))
    return configs


def _yaml(text: str):
    try:
        import yaml
    except ImportError as exc:
        raise CompareError("--methods: reading YAML needs PyYAML (pip install pyyaml), or give a .json file") from exc
    return yaml.safe_load(text)


# ------------------------------------------------------------------------------------------- node schemas
class Schemas:
    """Node schemas as ``/object_info`` gives them (a server's, or this process's ComfyUI's)."""

    def __init__(self, info: dict):
        self.info = info

    def has(self, class_type: str) -> bool:
        return class_type in self.info

    def input_order(self, class_type: str) -> list[tuple[str, tuple]]:
        node = self.info[class_type]
        spec = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        order = node.get("input_order") or {k: list(v) for k, v in node["input"].items()}
        return [(name, tuple(spec[name])) for part in ("required", "optional") for name in order.get(part, [])]

    def defaults(self, class_type: str) -> dict:
        out = {}
        for name, spec in self.input_order(class_type):
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" in opts:
                out[name] = opts["default"]
            elif _options(spec):
                out[name] = _options(spec)[0]
        return out

    def check_value(self, class_type: str, name: str, value, where: str) -> None:
        spec = dict(self.input_order(class_type)).get(name)
        if spec is None:
            widgets = [n for n, s in self.input_order(class_type) if isinstance(s[0], list) or
                       s[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
            raise CompareError(f"{where}: '{name}' is not an input of {class_type}; its inputs are "
                               f"{', '.join(widgets)}")
        kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
        if isinstance(kind, list) or kind == "COMBO":
            if value not in _options(spec):
                raise CompareError(f"{where}: {name} = {value!r} is not one of {_options(spec)}")
        elif kind in ("INT", "FLOAT"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                (kind == "FLOAT" or float(value).is_integer())
            lo, hi = opts.get("min", float("-inf")), opts.get("max", float("inf"))
            if not ok or not lo <= value <= hi:
                raise CompareError(f"{where}: {name} = {value!r} is not allowed; {class_type} takes "
                                   f"{'an integer' if kind == 'INT' else 'a number'} in [{lo}, {hi}]")
        elif kind == "STRING" and not isinstance(value, str):
            raise CompareError(f"{where}: {name} = {value!r} must be text")
        elif kind == "BOOLEAN" and not isinstance(value, bool):
            raise CompareError(f"{where}: {name} = {value!r} must be true or false")


# ------------------------------------------------------------------------------------------------ template
@dataclass
class Template:
    """A workflow template in API format and the nodes the runner edits."""

    prompt: dict
    text_node: str               # Text Self-Attention
    method_node: str             # the method node feeding the guidance input
    guided_node: str             # Guided KSampler or Apply Guidance
    sampler_node: str            # the node that samples (the Guided KSampler itself, or the sampler after Apply)
    decode_node: str             # VAE Decode of the sampler's latent
    loader: tuple[str, str, str] | None   # (node id, class, checkpoint name) of the model loader, if one

    @property
    def toy(self) -> bool:
        return self.loader is not None and self.loader[1] == "AttentionAlignLoadToyModel"


def _links_to(prompt: dict, node_id: str, slot: int | None = None) -> list[tuple[str, str]]:
    """(consumer id, input name) of every input linked to ``node_id`` (output ``slot``, or any)."""
    return [(nid, name) for nid, node in prompt.items() for name, v in node["inputs"].items()
            if isinstance(v, list) and len(v) == 2 and str(v[0]) == node_id and (slot is None or v[1] == slot)]


def load_template(path: str, schemas: Schemas) -> Template:
    import headless

    p = Path(path)
    if not p.is_file():
        raise CompareError(f"--workflow: {path} is not a file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CompareError(f"--workflow: {path} is not JSON ({exc})") from exc
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        missing = sorted({n["type"] for n in data["nodes"] if n["type"] not in ("Note", "MarkdownNote")
                          and not schemas.has(n["type"])})
        if missing:
            raise CompareError(f"--workflow: {path} uses nodes this ComfyUI does not have: {', '.join(missing)}")
        prompt = headless.ui_to_api(data, schemas)
    elif isinstance(data, dict) and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        prompt = {str(k): v for k, v in data.items()}
    else:
        raise CompareError(f"--workflow: {path} is neither a UI-format workflow nor an API-format prompt")
    guided = [nid for nid, n in prompt.items() if n["class_type"] in GUIDED]
    if len(guided) != 1:
        raise CompareError(f"--workflow: {path} must contain exactly one Guided KSampler or Apply Guidance node "
                           f"(found {len(guided)}); the runner swaps the method that feeds it")
    g = guided[0]
    link = prompt[g]["inputs"].get("guidance")
    method = str(link[0]) if isinstance(link, list) else None
    if method is None or prompt[method]["class_type"] not in METHOD_NODES.values():
        names = ", ".join(m.display_name for m in REGISTRY.METHODS if m.text_attention)
        raise CompareError(f"--workflow: the guidance input of node {g} must come from one of the pack's method "
                           f"nodes ({names})")
    ta_link = prompt[method]["inputs"].get("text_attention")
    text = str(ta_link[0]) if isinstance(ta_link, list) else None
    if text is None or prompt[text]["class_type"] != "AttentionAlignTextSelfAttention":
        raise CompareError("--workflow: the method node's text_attention must come from a Text Self-Attention node "
                           "(whose text the runner sets per prompt)")
    if prompt[g]["class_type"] == "AttentionAlignGuidedKSampler":
        sampler = g
    else:
        users = [nid for nid, name in _links_to(prompt, g, 0) if prompt[nid]["class_type"] in SAMPLERS]
        if len(users) != 1:
            raise CompareError(f"--workflow: Apply Guidance (node {g}) must feed exactly one KSampler or KSampler "
                               f"(Advanced), found {len(users)}")
        sampler = users[0]
    decodes = [nid for nid, name in _links_to(prompt, sampler, 0) if prompt[nid]["class_type"] == "VAEDecode"]
    if not decodes:
        raise CompareError(f"--workflow: the sampler (node {sampler}) must feed a VAE Decode")
    loader = None
    for nid, n in prompt.items():
        if "ckpt_name" in n["inputs"] and isinstance(n["inputs"]["ckpt_name"], str):
            loader = (nid, n["class_type"], n["inputs"]["ckpt_name"])
    return Template(prompt, text, method, g, sampler, decodes[0], loader)


def _new_id(prompt: dict, stem: str) -> str:
    nid = stem
    while nid in prompt:
        nid += "_"
    return nid


def job_prompt(t: Template, schemas: Schemas, item: PromptItem, seed: int, config: MethodConfig,
               prefix: str) -> tuple[dict, str, str]:
    """The API prompt of one job; returns (prompt, id of its Save Image node, id of its Attention Report)."""
    p = json.loads(json.dumps(t.prompt))              # a copy; what the job does not need is dropped at the end
    p[t.text_node]["inputs"]["text"] = item.text
    for n in p.values():
        for key in ("seed", "noise_seed"):
            if key in n["inputs"] and not isinstance(n["inputs"][key], list):
                n["inputs"][key] = seed
        if n["class_type"] == "EmptyLatentImage":
            n["inputs"]["batch_size"] = 1
    report = {"text_attention": [t.text_node, 0], "subjects": item.subjects, "groups": item.groups,
              "parser": "builtin", "level": 0}
    sampler = t.sampler_node
    if config.node is None:                                       # unguided: the stock sampler, a capture for maps
        if t.guided_node == t.sampler_node:
            inputs = {k: v for k, v in p[sampler]["inputs"].items() if k != "guidance"}
            p[sampler] = {"class_type": "KSampler", "inputs": inputs}
            model_src = inputs["model"]
        else:
            model_src = p[t.guided_node]["inputs"]["model"]
        cap = _new_id(p, "aa_capture")
        p[cap] = {"class_type": "AttentionAlignCaptureCrossAttention",
                  "inputs": {"model": model_src, "levels": 0, "record_steps": False}}
        p[sampler]["inputs"]["model"] = [cap, 0]                  # the method (and Apply Guidance) now unused
        report.update(attention_maps=[cap, 1], latent=[sampler, 0])
    else:
        node = config.node
        old = p[t.method_node]["inputs"]
        inputs = schemas.defaults(node)
        inputs.update({k: v for k, v in old.items() if k in inputs and not isinstance(v, list)})
        word_input, field_name = WORD_INPUTS.get(node, (None, None))
        if word_input is not None:
            inputs[word_input] = getattr(item, field_name) or ""
        inputs.update(config.inputs)
        inputs["text_attention"] = [t.text_node, 0]
        p[t.method_node] = {"class_type": node, "inputs": inputs}
        if t.guided_node == sampler:
            report.update(attention_maps=[sampler, 1], guidance_log=[sampler, 2])
        else:
            cap = _new_id(p, "aa_capture")
            p[cap] = {"class_type": "AttentionAlignCaptureCrossAttention",
                      "inputs": {"model": [t.guided_node, 0], "levels": 0, "record_steps": False}}
            p[sampler]["inputs"]["model"] = [cap, 0]
            report.update(attention_maps=[cap, 1], guidance_log=[t.guided_node, 1], latent=[sampler, 0])
    save, rep = _new_id(p, "aa_save"), _new_id(p, "aa_report")
    p[save] = {"class_type": "SaveImage", "inputs": {"images": [t.decode_node, 0], "filename_prefix": prefix}}
    p[rep] = {"class_type": "AttentionAlignReport", "inputs": report}
    return _needed_by(p, [save, rep]), save, rep


def _needed_by(p: dict, roots: list[str]) -> dict:
    """Only the nodes the roots depend on. This drops the template's own outputs, the method and Apply Guidance nodes
    an unguided job no longer uses, and any other branch (a Visualize Attention that plotted the template's loss would
    run in-process, and fail on a method without a loss or read an output the stock KSampler does not have)."""
    keep, todo = set(), list(roots)
    while todo:
        nid = todo.pop()
        if nid in keep:
            continue
        keep.add(nid)
        todo += [v[0] for v in p[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2 and v[0] in p]
    return {nid: n for nid, n in p.items() if nid in keep}


def validate_configs(configs: list[MethodConfig], schemas: Schemas) -> None:
    for c in configs:
        if c.node is None:
            continue
        if not schemas.has(c.node):
            raise CompareError(f"--methods: {c.name}: this ComfyUI has no {c.node} node (is the pack installed?)")
        for name, value in c.inputs.items():
            if name == "text_attention":
                raise CompareError(f"--methods: {c.name}: text_attention is wired by the runner, not an input")
            schemas.check_value(c.node, name, value, f"--methods: {c.name}")


# ------------------------------------------------------------------------------------------------- backends
class ServerDown(RuntimeError):
    """The server did not answer."""


class JobFailed(RuntimeError):
    """The server ran the job and reported an error."""


class HttpServer:
    """A ComfyUI server, driven through its HTTP API."""

    def __init__(self, url: str, *, timeout: float = 600.0):
        self.url, self.name, self.timeout = url.rstrip("/"), url.rstrip("/").split("//")[-1], timeout
        self.client_id = uuid.uuid4().hex

    def _get(self, path: str, timeout: float = 30.0):
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                raise JobFailed(f"{self.name}: GET {path} → HTTP {exc.code}") from exc
            raise ServerDown(f"{self.name}: {exc}") from exc

    def object_info(self) -> dict:
        return json.loads(self._get("/object_info", timeout=60.0))

    def run(self, prompt: dict) -> dict:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30.0) as r:
                pid = json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as exc:
            raise JobFailed(f"{self.name} refused the prompt: {exc.read().decode(errors='replace')[:2000]}") from exc
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise ServerDown(f"{self.name}: {exc}") from exc
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            entry = json.loads(self._get(f"/history/{pid}")).get(pid)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "error" or not status.get("completed"):
                    errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
                    detail = errors[0].get("exception_message", "") if errors else status
                    raise JobFailed(f"{self.name}: the job failed: {detail}")
                return entry["outputs"]
            time.sleep(0.1)
        raise ServerDown(f"{self.name}: the job did not finish within {self.timeout:.0f} s")

    def image(self, ref: dict) -> bytes:
        query = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._get(f"/view?{query}")


class InProcess:
    """ComfyUI in this process (its own executor), for runs without servers."""

    name = "in-process"

    def __init__(self, host):
        self.host = host

    def object_info(self) -> dict:
        return {name: _node_info(name) for name in self.host.nodes.NODE_CLASS_MAPPINGS}

    def run(self, prompt: dict) -> dict:
        import headless

        try:
            self.host.run(prompt, fresh=False)
        except headless.ExecutionFailed as exc:
            raise JobFailed(f"in-process: the job failed: {exc.exception_message}") from exc
        return self.host.ui_outputs

    def image(self, ref: dict) -> bytes:
        base = {"output": "output", "temp": "temp"}[ref.get("type", "output")]
        return (self.host.base_dir / base / ref.get("subfolder", "") / ref["filename"]).read_bytes()


def _node_info(name: str) -> dict:
    """What ``/object_info`` says of a node, computed the way ComfyUI's server does."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[name]
    inputs = cls.INPUT_TYPES()
    return {"input": inputs, "input_order": {k: list(v.keys()) for k, v in inputs.items()},
            "output": list(cls.RETURN_TYPES), "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}


def _options(spec) -> list:
    """A combo input's choices, in either form ComfyUI describes them: ``[choices, opts]`` or
    ``["COMBO", {"options": choices}]``."""
    if isinstance(spec[0], list):
        return spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return list(opts.get("options", [])) if spec[0] == "COMBO" else []


def check_backends(backends, needed: set[str], template: Template) -> Schemas:
    """Every backend answers, has every node the jobs need and the template's checkpoint; returns the first one's
    schemas. Raises CompareError naming the server and what is missing."""
    first = None
    for b in backends:
        try:
            info = b.object_info()
        except (ServerDown, JobFailed) as exc:
            raise CompareError(f"--servers: {b.name} does not answer ({exc}); start it or leave it out") from exc
        missing = sorted(needed - set(info))
        if missing:
            raise CompareError(f"--servers: {b.name} has no {', '.join(missing)} node"
                               f"{'s' if len(missing) > 1 else ''} (is the Attention Align pack installed there, "
                               "and the same version?)")
        if template.loader is not None:
            _, cls, ckpt = template.loader
            choices = _options(info[cls]["input"]["required"].get("ckpt_name", [[]]))
            if ckpt not in choices:
                raise CompareError(f"--servers: {b.name} has no checkpoint '{ckpt}' for {cls} (it lists "
                                   f"{len(choices)}: {', '.join(map(str, choices[:6]))}{' …' if len(choices) > 6 else ''})"
                                   "; put the file in its models/checkpoints")
        first = first or Schemas(info)
    return first


# -------------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class Job:
    item: PromptItem
    seed_index: int
    seed: int
    config: MethodConfig

    @property
    def key(self) -> str:
        return f"{self.config.name}/{self.item.index:05d}/{self.seed}"

    @property
    def image_rel(self) -> str:
        return f"images/{self.config.name}/{self.item.index:05d}_{self.seed}.png"


class Manifest:
    """Append-only JSONL of finished jobs; the last line of a job wins (a failure retried later becomes done)."""

    def __init__(self, out: Path, shard: str = ""):
        self.path = out / f"manifest{('-' + shard) if shard else ''}.jsonl"
        self.lock = threading.Lock()
        self.records: dict[str, dict] = {}
        for p in sorted(out.glob("manifest*.jsonl")):
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue                                   # a line cut by a crash: that job reruns
                    self.records[rec["job"]] = rec
        if self.path.exists() and not self.path.read_bytes().endswith(b"\n"):
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n")                                     # close a line a crash left open

    def done(self, key: str) -> bool:
        return self.records.get(key, {}).get("status") == "done"

    def write(self, record: dict) -> None:
        with self.lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
            self.records[record["job"]] = record


def toy_scores(png: bytes, item: PromptItem) -> dict:
    from PIL import Image

    from toy import judge, scenes

    mentions = item.meta.get("mentions")
    try:
        mentions = [scenes.Mention(s, c) for s, c in mentions] if mentions else list(scenes.parse_caption(item.text))
    except ValueError:
        return {}
    img = Image.open(io.BytesIO(png)).convert("RGB")
    s = judge.score(judge.detect(img, image_size=img.size[0]), mentions)
    return {"present": sum(s.present) / len(s.present), "bound": sum(s.bound) / len(s.bound),
            "correct": float(s.correct)}


def execute(job: Job, backend, template: Template, schemas: Schemas, out: Path) -> dict:
    prefix = f"attention_align_compare/{job.config.name}_{job.item.index:05d}_{job.seed}"
    prompt, save, rep = job_prompt(template, schemas, job.item, job.seed, job.config, prefix)
    t0 = time.perf_counter()
    outputs = backend.run(prompt)
    seconds = time.perf_counter() - t0
    images = outputs.get(save, {}).get("images") or []
    if len(images) != 1:
        raise JobFailed(f"{backend.name}: expected one image from the job, got {len(images)}")
    png = backend.image(images[0])
    target = out / job.image_rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(png)
    tmp.replace(target)                                           # complete images only, under their final name
    text = (outputs.get(rep, {}).get("text") or ["{}"])[0]
    report = json.loads(text)
    record = {"job": job.key, "status": "done", "method": job.config.name, "prompt_index": job.item.index,
              "prompt": job.item.text, "seed": job.seed, "seed_index": job.seed_index, "server": backend.name,
              "seconds": round(seconds, 3), "image": job.image_rel, "report": report}
    if template.toy:
        record["toy"] = toy_scores(png, job.item)
    return record


def run_jobs(jobs: list[Job], backends: list, template: Template, schemas: Schemas, manifest: Manifest, out: Path,
             *, retries: int = 2, progress: bool = True) -> dict[str, int]:
    """Shard ``jobs`` over ``backends`` (one worker each); returns images done per backend."""
    from tqdm import tqdm

    queue, lock = deque(jobs), threading.Lock()
    attempts: dict[str, list[str]] = {}
    done_by = {b.name: 0 for b in backends}
    alive = {b.name for b in backends}
    start = time.monotonic()
    bar = tqdm(total=len(jobs), desc="jobs", disable=not progress, smoothing=0.1)

    def postfix():
        minutes = max((time.monotonic() - start) / 60, 1e-9)
        bar.set_postfix_str(" ".join(f"{n}: {d / minutes:.1f}/min" + ("" if n in alive else " (down)")
                                     for n, d in done_by.items()))

    failed_on: dict[str, set[str]] = {}

    def take(name):
        """The next job for server ``name``: one that has not failed there while another live server has not tried
        it (a failing job goes elsewhere first); None if only such jobs are left now."""
        for k, job in enumerate(queue):
            tried = failed_on.get(job.key, set())
            if name not in tried or not (alive - tried - {name}):
                del queue[k]
                return job
        return None

    def worker(b):
        while True:
            with lock:
                if not queue:
                    return
                job = take(b.name)
            if job is None:
                time.sleep(0.05)
                continue
            try:
                record = execute(job, b, template, schemas, out)
            except ServerDown as exc:
                with lock:
                    alive.discard(b.name)
                    attempts.setdefault(job.key, []).append(str(exc))
                    queue.appendleft(job)                          # another server takes it
                    postfix()
                return
            except (JobFailed, Exception) as exc:  # noqa: BLE001  (a failing job must not kill the run)
                with lock:
                    errors = attempts.setdefault(job.key, []) + [f"{type(exc).__name__}: {exc}"]
                    attempts[job.key] = errors
                    failed_on.setdefault(job.key, set()).add(b.name)
                    if len(errors) <= retries:
                        queue.append(job)
                        continue
                manifest.write({"job": job.key, "status": "failed", "method": job.config.name,
                                "prompt_index": job.item.index, "seed": job.seed, "errors": errors})
                with lock:
                    bar.update(1)
                continue
            manifest.write(record)
            with lock:
                done_by[b.name] += 1
                bar.update(1)
                postfix()

    threads = [threading.Thread(target=worker, args=(b,), daemon=True) for b in backends]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    finally:
        bar.close()
    if queue:
        print(f"compare: {len(queue)} jobs left and no server answering; run the same command again to finish them",
              file=sys.stderr)
    return done_by


# ---------------------------------------------------------------------------------------------------- outputs
def _slug(text: str) -> str:
    return re.sub(r"[^\w ,.'-]", "_", text).strip()[:200]


def export_layouts(manifest: Manifest, items: list[PromptItem], out: Path) -> None:
    """T2I-CompBench's and GenEval's layouts, as hard links (copies where links fail) of the finished images."""
    import os
    import shutil

    by_index = {i.index: i for i in items}
    for rec in manifest.records.values():
        if rec.get("status") != "done":
            continue
        src = out / rec["image"]
        item = by_index.get(rec["prompt_index"])
        if item is None or not src.exists():
            continue
        targets = [out / "t2i_compbench" / rec["method"] / "samples" / f"{_slug(item.text)}_{rec['seed_index']:06d}.png",
                   out / "geneval" / rec["method"] / f"{item.index:05d}" / "samples" / f"{rec['seed_index']:04d}.png"]
        meta = out / "geneval" / rec["method"] / f"{item.index:05d}" / "metadata.jsonl"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(item.meta or {"prompt": item.text}) + "\n")
        for t in targets:
            t.parent.mkdir(parents=True, exist_ok=True)
            if t.exists():
                t.unlink()
            try:
                os.link(src, t)
            except OSError:
                shutil.copyfile(src, t)


def _mean(v):
    return None if v is None or v == [] else (sum(v) / len(v) if isinstance(v, list) else v)


def rows_of(manifest: Manifest) -> list[dict]:
    rows = []
    for rec in sorted(manifest.records.values(), key=lambda r: (r["method"], r["prompt_index"], r.get("seed", 0))):
        if rec.get("status") != "done":
            continue
        rep = rec.get("report", {})
        row = {"method": rec["method"], "prompt_index": rec["prompt_index"], "prompt": rec["prompt"],
               "seed": rec["seed"], "server": rec["server"], "seconds": rec["seconds"], "image": rec["image"]}
        for m in METRICS:
            row[m] = _mean(rep.get(m))
        row.update({f"toy_{k}": v for k, v in rec.get("toy", {}).items()})
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per method and quantity: mean and 95 % bootstrap interval over prompts (each prompt: mean over seeds)."""
    from stats import bootstrap_ci

    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        entry = {"images": len(mine), "seconds_per_image": sum(r["seconds"] for r in mine) / len(mine)}
        for key in [*METRICS, "toy_present", "toy_bound", "toy_correct"]:
            per: dict[int, list[float]] = {}
            for r in mine:
                if r.get(key) is not None:
                    per.setdefault(r["prompt_index"], []).append(float(r[key]))
            if per:
                entry[key] = bootstrap_ci([sum(v) / len(v) for v in per.values()])
        out[method] = entry
    return out


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def write_html(rows: list[dict], manifest: Manifest, items: list[PromptItem], out: Path, *, grid_prompts: int = 8) -> None:
    """A self-contained report: summary table, grids (rows = prompts, columns = methods, first seed), plots."""
    import html

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("compare: the HTML report's plots need matplotlib (pip install matplotlib)") from exc
    summ = summary(rows)
    methods = list(summ)
    keys = [k for k in [*METRICS, "toy_present", "toy_bound", "toy_correct"] if any(k in e for e in summ.values())]
    parts = ["<!doctype html><meta charset='utf-8'><title>Attention Align comparison</title>",
             "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:3px 6px;font-size:12px}img{display:block}</style>",
             f"<h1>Comparison: {len(methods)} methods, {len({r['prompt_index'] for r in rows})} prompts, "
             f"{len(rows)} images</h1>",
             "<p>Mean and 95 % bootstrap interval over prompts (each prompt: the mean over its seeds).</p><table><tr>"
             "<th>method</th><th>images</th><th>s / image</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys)
             + "</tr>"]
    for m, e in summ.items():
        cells = "".join(f"<td>{e[k][0]:.3f} [{e[k][1]:.3f}, {e[k][2]:.3f}]</td>" if k in e else "<td>–</td>"
                        for k in keys)
        parts.append(f"<tr><td>{html.escape(m)}</td><td>{e['images']}</td><td>{e['seconds_per_image']:.2f}</td>"
                     f"{cells}</tr>")
    parts.append("</table><h2>Images (first seed)</h2><table><tr><th>prompt</th>"
                 + "".join(f"<th>{html.escape(m)}</th>" for m in methods) + "</tr>")
    first_seed = min((r["seed"] for r in rows), default=0)
    by = {(r["method"], r["prompt_index"]): r for r in rows if r["seed"] == first_seed}
    for item in items[:grid_prompts]:
        cells = []
        for m in methods:
            r = by.get((m, item.index))
            if r is None:
                cells.append("<td>–</td>")
                continue
            b64 = base64.b64encode((out / r["image"]).read_bytes()).decode()
            cells.append(f"<td><img width=160 src='data:image/png;base64,{b64}'></td>")
        parts.append(f"<tr><td style='max-width:220px'>{html.escape(item.text)}</td>{''.join(cells)}</tr>")
    parts.append("</table><h2>Loss per step</h2>")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for m in methods:
        curves = [rec["report"].get("loss_per_step") for rec in manifest.records.values()
                  if rec.get("status") == "done" and rec["method"] == m and rec.get("report", {}).get("loss_per_step")]
        if curves:
            n = min(len(c) for c in curves)
            mean = [sum(sum(c[i]) / len(c[i]) for c in curves) / len(curves) for i in range(n)]
            ax.plot(range(n), mean, marker="o", label=m)
    ax.set_xlabel("guided step")
    ax.set_ylabel("loss (mean over images)")
    if ax.lines:
        ax.legend(fontsize=8)
    parts.append(f"<img src='data:image/png;base64,{_png_b64(fig)}'>")
    plt.close(fig)
    parts.append("<h2>Metrics per method</h2>")
    for k in keys:
        fig, ax = plt.subplots(figsize=(7, 2.8))
        data = [[r[k] for r in rows if r["method"] == m and r.get(k) is not None] for m in methods]
        ax.boxplot([d if d else [float("nan")] for d in data])
        ax.set_xticks(range(1, len(methods) + 1), methods)     # boxplot's own label keyword was renamed in 3.9
        ax.set_title(k)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
        parts.append(f"<img src='data:image/png;base64,{_png_b64(fig)}'>")
        plt.close(fig)
    (out / "report.html").write_text("\n".join(parts), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- main
def parse_seeds(spec: str) -> list[int]:
    seeds: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-", 1)
                seeds += list(range(int(a), int(b) + 1))
            elif part.strip():
                seeds.append(int(part))
    except ValueError:
        raise CompareError(f"--seeds: '{spec}' is not a list of seeds (e.g. 0,1,2 or 0-3)") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise CompareError(f"--seeds: '{spec}' must name distinct non-negative seeds")
    return seeds


def parse_shard(spec: str) -> tuple[int, int] | None:
    if not spec:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise CompareError(f"--shard: '{spec}' must be K/N with 0 ≤ K < N")
    return int(m[1]), int(m[2])


def build(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", required=True, help="a prompt file (.txt, GenEval .jsonl) or builtin:<set>")
    ap.add_argument("--methods", required=True, help="JSON or YAML list of method configurations")
    ap.add_argument("--seeds", default="0", help="e.g. 0,1,2 or 0-3")
    ap.add_argument("--workflow", default=None, help="template workflow (default: the toy model's A&E workflow)")
    ap.add_argument("--servers", default="", help="comma-separated ComfyUI URLs; none: in this process")
    ap.add_argument("--out", default=str(ROOT / "out" / "compare"))
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--shard", default="", help="K/N: run every N-th job from the K-th (array jobs)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one job may take on a server")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-report", action="store_true", help="skip the HTML report (CSV and layouts still written)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = build(argv)
    try:
        items = read_prompt_set(a.prompts)
        if a.limit:
            items = items[:a.limit]
        configs = read_configs(a.methods)
        seeds = parse_seeds(a.seeds)
        shard = parse_shard(a.shard)
        if a.servers:
            backends = [HttpServer(u.strip(), timeout=a.timeout) for u in a.servers.split(",") if u.strip()]
            if len({b.url for b in backends}) != len(backends):
                raise CompareError(f"--servers: '{a.servers}' names a server twice")
        else:
            import headless

            comfy = headless.find_comfyui()
            if comfy is None:
                raise CompareError(f"--servers: none given, and to run in-process: {headless.NO_COMFYUI}")
            backends = [InProcess(headless.ComfyHost.instance(comfy, Path(tempfile.mkdtemp(prefix="aa_compare_"))))]
        info = backends[0].object_info() if not a.servers else None
        schemas0 = Schemas(info) if info is not None else None
        if schemas0 is None:
            try:
                schemas0 = Schemas(backends[0].object_info())
            except (ServerDown, JobFailed) as exc:
                raise CompareError(f"--servers: {backends[0].name} does not answer ({exc})") from exc
        workflow = a.workflow or str(DEFAULT_TOY_WORKFLOW)
        template = load_template(workflow, schemas0)
        needed = ({n["class_type"] for n in template.prompt.values()} | {c.node for c in configs if c.node}
                  | {"SaveImage", "AttentionAlignReport", "AttentionAlignCaptureCrossAttention", "KSampler"})
        schemas = check_backends(backends, needed, template)
        validate_configs(configs, schemas)
    except (CompareError, PromptSetError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out, f"{shard[0]}of{shard[1]}" if shard else "")
    jobs = [Job(item, k, seed, c) for item in items for k, seed in enumerate(seeds) for c in configs]
    if shard:
        jobs = jobs[shard[0]::shard[1]]
    todo = [j for j in jobs if not manifest.done(j.key)]
    print(f"compare: {len(jobs)} jobs ({len(items)} prompts × {len(seeds)} seeds × {len(configs)} methods), "
          f"{len(jobs) - len(todo)} already done, {len(todo)} to run on {', '.join(b.name for b in backends)}")
    t0 = time.perf_counter()
    done_by = run_jobs(todo, backends, template, schemas, manifest, out, retries=a.retries,
                       progress=not a.no_progress)
    wall = time.perf_counter() - t0
    rows = rows_of(manifest)
    write_csv(rows, out / "results.csv")
    export_layouts(manifest, items, out)
    if not a.no_report:
        write_html(rows, manifest, items, out)
    failed = [r for r in manifest.records.values() if r.get("status") == "failed"]
    print(f"compare: {sum(done_by.values())} images in {wall:.1f} s ({', '.join(f'{n}: {d}' for n, d in done_by.items())}); "
          f"{len(failed)} failed; results in {out}")
    for r in failed[:5]:
        print(f"  failed {r['job']}: {r['errors'][-1]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
