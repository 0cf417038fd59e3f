"""The comparison runner against real ComfyUI servers on 127.0.0.1 (the pack's toy model, 64 px, 4 steps) and in
process: work splits, a killed server loses nothing, a restarted run resumes, the same seed gives the same image on
any server, and bad input is refused before any job is queued."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.heavy

METHODS = [{"method": "unguided"}, {"method": "attend_excite", "inputs": {"max_refinement_steps": 0}}]


@pytest.fixture(scope="module")
def template(tmp_path_factory, comfy_path):
    """The toy model's Attend-and-Excite workflow at 64 px and 4 steps (UI format, as a user saves it)."""
    from conftest import ROOT

    wf = json.loads((ROOT / "example_workflows" / "attend_and_excite_toy.json").read_text())
    for node in wf["nodes"]:
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"][0] = node["widgets_values"][1] = 64
        if node["type"] == "AttentionAlignGuidedKSampler":
            node["widgets_values"][2] = 4                                     # seed, control, steps, …
    path = tmp_path_factory.mktemp("compare_wf") / "ae_toy_64.json"
    path.write_text(json.dumps(wf))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare_in")
    (d / "methods.json").write_text(json.dumps(METHODS))
    (d / "prompts.txt").write_text("a red circle and a blue square\na green star next to a white heart\n"
                                   "a purple cross and an orange triangle\n")
    return d


@pytest.fixture(scope="module")
def servers(tmp_path_factory, comfy_path):
    from frontend import ComfyServer

    started = [ComfyServer(tmp_path_factory.mktemp(f"server{k}"), comfy_path) for k in range(2)]
    threads = [threading.Thread(target=s.start) for s in started]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    yield started
    for s in started:
        s.stop()


def compare(*args):
    import compare as runner

    return runner.main([*map(str, args), "--no-progress"])


def manifest(out):
    return [json.loads(line) for p in sorted(out.glob("manifest*.jsonl")) for line in p.read_text().splitlines()
            if line.strip()]


def pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_jobs_split_over_two_servers_and_resume_after_a_restart(servers, template, files, tmp_path):
    out = tmp_path / "out"
    urls = ",".join(s.url for s in servers)
    common = ["--prompts", files / "prompts.txt", "--methods", files / "methods.json", "--workflow", template,
              "--seeds", "0,1", "--out", out]
    assert compare(*common, "--servers", urls, "--limit", 1) == 0               # 1 prompt × 2 seeds × 2 methods
    first = manifest(out)
    assert len(first) == 4 and {r["status"] for r in first} == {"done"}
    assert compare(*common, "--servers", urls) == 0                             # the rest only
    records = manifest(out)
    assert len(records) == 12 and len({r["job"] for r in records}) == 12      # nothing ran twice
    assert {r["server"] for r in records} == {s.url.split("//")[1] for s in servers}   # both worked
    assert len(list(out.glob("images/*/*.png"))) == 12
    report = records[-1]["report"]
    assert "weakest_subject_attention" in report and report["prompt"]
    assert all(0 <= r["toy"]["present"] <= 1 for r in records)
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 13 and "toy_correct" in rows[0]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 6 and "attend_excite" in html
    assert len(list(out.glob("t2i_compbench/*/samples/*.png"))) == 12
    assert len(list(out.glob("geneval/*/*/samples/*.png"))) == 12


def test_the_same_seed_gives_the_same_image_on_either_server(servers, template, files, tmp_path):
    outs = []
    for k, s in enumerate(servers):
        out = tmp_path / f"s{k}"
        assert compare("--prompts", files / "prompts.txt", "--methods", files / "methods.json", "--workflow",
                       template, "--seeds", "3", "--limit", 1, "--out", out, "--servers", s.url) == 0
        outs.append(out)
    for rel in ("images/unguided/00000_3.png", "images/attend_excite/00000_3.png"):
        assert np.array_equal(pixels(outs[0] / rel), pixels(outs[1] / rel))


def test_a_killed_server_loses_nothing(tmp_path_factory, comfy_path, template, files, tmp_path):
    from frontend import ComfyServer

    pair = [ComfyServer(tmp_path_factory.mktemp(f"victim{k}"), comfy_path) for k in range(2)]
    for s in pair:
        s.start()
    out = tmp_path / "out"
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("rc", compare(
        "--prompts", files / "prompts.txt", "--methods", files / "methods.json", "--workflow", template,
        "--seeds", "0,1", "--out", out, "--servers", ",".join(s.url for s in pair))))
    try:
        runner.start()
        deadline = time.time() + 300
        while time.time() < deadline and len(manifest(out)) < 2:
            time.sleep(0.2)
        pair[1].proc.kill()                                                     # mid-run, without warning
        runner.join(timeout=600)
    finally:
        for s in pair:
            s.stop()
    assert result.get("rc") == 0
    records = manifest(out)
    assert len({r["job"] for r in records if r["status"] == "done"}) == 12
    assert len(list(out.glob("images/*/*.png"))) == 12 and not list(out.glob("images/*/*.part"))


def test_a_server_without_the_pack_or_the_model_is_refused_before_any_job(tmp_path_factory, comfy_path, servers,
                                                                           template, files, tmp_path, capsys):
    from frontend import ComfyServer

    bare = ComfyServer(tmp_path_factory.mktemp("bare"), comfy_path)
    (bare.base_dir / "custom_nodes" / "attention-align").unlink()              # no pack there
    with bare:
        rc = compare("--prompts", files / "prompts.txt", "--methods", files / "methods.json", "--workflow",
                     template, "--out", tmp_path / "a", "--servers", f"{servers[0].url},{bare.url}")
    err = capsys.readouterr().err
    assert rc == 2 and "has no" in err and "AttentionAlign" in err and "is the Attention Align pack installed" in err
    assert not (tmp_path / "a" / "manifest.jsonl").exists()
    wf = json.loads(open(template).read())
    for node in wf["nodes"]:
        if node["type"] == "AttentionAlignLoadToyModel":
            node["widgets_values"][0] = "missing_model.safetensors"
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(wf))
    rc = compare("--prompts", files / "prompts.txt", "--methods", files / "methods.json", "--workflow", missing,
                 "--out", tmp_path / "b", "--servers", servers[0].url)
    err = capsys.readouterr().err
    assert rc == 2 and "has no checkpoint 'missing_model.safetensors'" in err


@pytest.mark.parametrize("change, message", [
    ({"--methods": "bad_method"}, "unknown method 'teleport'"),
    ({"--prompts": "missing"}, "no such file"),
    ({"--servers": "http://127.0.0.1:9"}, "does not answer"),
    ({"--workflow": "no_guided"}, "must contain exactly one Guided KSampler or Apply Guidance"),
])
def test_bad_input_is_refused_before_work_starts(files, template, tmp_path, capsys, change, message):
    from conftest import ROOT

    (files / "bad_method.json").write_text(json.dumps([{"method": "teleport"}]))
    args = {"--prompts": files / "prompts.txt", "--methods": files / "methods.json", "--workflow": template,
            "--out": tmp_path / "o", "--servers": ""}
    for key, value in change.items():
        args[key] = {"bad_method": files / "bad_method.json", "missing": files / "nope.txt",
                     "no_guided": ROOT / "example_workflows" / "capture_and_visualise_toy.json"}.get(value, value)
    argv = [x for k, v in args.items() if v != "" for x in (k, v)]
    assert compare(*argv) == 2
    assert message in capsys.readouterr().err


def test_in_process_default_runs_on_the_toy_model(files, tmp_path, host):
    """No --servers: the runner uses ComfyUI in this process (the test session's host) on the toy model."""
    import compare as runner

    out = tmp_path / "inproc"
    backend = runner.InProcess(host)
    schemas = runner.Schemas(backend.object_info())
    t = runner.load_template(str(runner.DEFAULT_TOY_WORKFLOW), schemas)
    assert t.toy and t.prompt[t.guided_node]["class_type"] == "AttentionAlignGuidedKSampler"
    items = runner.read_prompt_set("builtin:toy")[:1]
    jobs = [runner.Job(items[0], 0, 0, runner.MethodConfig("unguided", "unguided"))]
    m = runner.Manifest(out)
    runner.run_jobs(jobs, [backend], t, schemas, m, out, progress=False)
    rec = m.records[jobs[0].key]
    assert rec["status"] == "done", rec
    assert set(rec["toy"]) == {"present", "bound", "correct"} and (out / rec["image"]).exists()
