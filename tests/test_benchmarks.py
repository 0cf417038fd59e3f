"""The benchmark tooling: FLOP fractions of the truncated gradient pass, the bound formula, and a smoke run."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.heavy  # runs the benchmarks

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_bound_formula():
    import flops

    assert flops.bound(1.28, 50, 25) == pytest.approx(1.32)              # the SD1.5 estimate
    assert flops.bound(1.28, 50, 25, refinement_iterations=1) - flops.bound(1.28, 50, 25) == pytest.approx(0.0128)
    assert flops.bound(1.0, 10, 5, cfg_forwards=1) == pytest.approx(1.5)
    assert flops.pass_cost({"full": 10.0, "truncated": 4.0, "backward": 5.0}) == pytest.approx(0.9)


def test_truncation_flops_follow_the_forward_order(host):
    """Stopping after the last ÷32 layer costs less than stopping after the last ÷16 layer (later in the tiny
    UNet's decoder), which costs less than a full forward."""
    import flops

    coarse, fine = flops.unet_flops("tiny", 128, 32), flops.unet_flops("tiny", 128, 16)
    assert coarse["full"] == fine["full"] > fine["truncated"] > coarse["truncated"] > 0
    assert coarse["last_layer"] == ("output", 1, 0) and fine["last_layer"] == ("output", 3, 0)
    assert 0 < coarse["backward"] < coarse["full"]
    toy = flops.unet_flops("toy", 128, 16)                  # the shipped toy model's architecture (its 8×8 level)
    assert toy["full"] > toy["truncated"] > 0 and 0 < toy["backward"] < toy["full"]


def test_benchmark_runs_and_reports_every_method(comfy_path, tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_methods.py"), "--arch", "tiny", "--size",
                          "64", "--steps", "3", "--methods", "tsam_refine,syngen,attention_modulation", "--json",
                          str(out)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "COMFYUI_PATH": str(comfy_path)})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"plain", "tsam_refine", "syngen", "attention_modulation"}
    assert rows["tsam_refine"]["guided_steps"] == 2 and rows["tsam_refine"]["refinement_iterations"] > 0
    assert rows["tsam_refine"]["bound"] > rows["syngen"]["bound"] > 1.0 == rows["attention_modulation"]["bound"]
    assert all(r["seconds"] > 0 and r["peak_mib"] > 0 for r in rows.values())
    assert "one gradient pass" in res.stdout


def test_dit_gradient_pass_reads_every_block_so_nothing_is_truncated(host):
    """On a DiT the losses average every joint block: the pass's forward runs every block (it stops only before
    the final layer), unlike a UNet's pass at a coarse level; the counts come from the real Flux / MMDiT classes."""
    import flops

    for arch in ("flux_tiny", "sd35_tiny"):
        c = flops.dit_flops(arch, 64)
        assert c["layers"] == (4 if arch == "flux_tiny" else 3) and c["level"] == 16
        assert 0.8 * c["full"] < c["truncated"] <= 1.05 * c["full"], (arch, c)
        assert c["backward"] > 0.5 * c["full"], (arch, c)
    unet = flops.unet_flops("tiny", 128, 32)
    assert unet["truncated"] < 0.5 * unet["full"]


def test_benchmark_runs_on_a_dit(comfy_path, tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_methods.py"), "--arch", "flux_tiny",
                          "--size", "64", "--steps", "3", "--methods", "attend_excite,joint_temperature,attention_regulation",
                          "--json",
                          str(out)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "COMFYUI_PATH": str(comfy_path)})
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"plain", "attend_excite", "joint_temperature", "attention_regulation"}
    assert data["args"]["cfg"] == 1.0
    assert rows["attend_excite"]["guided_steps"] == 2 and rows["attend_excite"]["bound"] > 1.0
    assert rows["joint_temperature"]["bound"] == 1.0 and rows["attention_regulation"]["bound"] == 1.0
    assert "regulation loss per step (before→best)" in res.stdout
    assert "one gradient pass" in res.stdout and "DiT forwards" in res.stdout


def test_toy_targets_measures_a_toy_model_through_comfyui(comfy_path, tmp_path):
    """The targets script on the shipped toy model, cut small: it reads the model's world off the file (v1), draws
    every colour × shape prompt, and the attention shares it reports (start, end, padding, words) are a partition
    of the softmax over 77 tokens."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_targets.py"), "--n-two", "2",
                          "--n-three", "1", "--samples", "1", "--steps", "3", "--loc-prompts", "2", "--round-trips",
                          "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "COMFYUI_PATH": str(comfy_path)})
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "summary.json").read_text())
    assert r["split"] == "v1" and r["one"]["prompts"] == 42 and r["two"]["prompts"] == 2 and r["three"]["prompts"] == 1
    assert sorted(r["localisation"], key=int) == ["8", "16"]
    for level in r["localisation"].values():
        shares = [level[k] for k in ("mass_start", "mass_end", "mass_padding", "mass_words")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-4) and min(shares) > 0
        assert 0 < level["flat_iou"] < 0.2 and 0 <= level["noun_iou"] <= 1
    assert r["vae"]["scenes"] == 2 and "| one object drawn right (42 prompts) |" in (tmp_path / "summary.md").read_text()


def test_toy_benchmark_judges_each_method_and_resumes(comfy_path, tmp_path):
    """The toy benchmark cut to one prompt, one sample, 3 steps: unguided and Attend-and-Excite are judged, the
    time ratio is against unguided in the same run, the localisation uses the targets' measure (shares of a softmax
    over 77 tokens sum to 1), and a rerun with the same settings and file samples nothing again."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "toy_benchmark.py"), "--n-two", "1", "--n-three", "0",
           "--samples", "1", "--steps", "3", "--methods", "attend_excite", "--loc-prompts", "1", "--grid-prompts",
           "0", "--out", str(tmp_path)]
    env = {**os.environ, "COMFYUI_PATH": str(comfy_path)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[2/2] prompt 0 attend_excite" in res.stdout
    r = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(r["table"]) == ["attend_excite", "unguided"] and r["table"]["unguided"]["images"] == 1
    assert r["table"]["attend_excite"]["time_ratio"] > 0 and len(r["settings"]["ckpt_sha256"]) == 64
    for level in r["localisation"].values():
        shares = [level[k] for k in ("mass_start", "mass_end", "mass_padding", "mass_words")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-4)
    rows = (tmp_path / "images.jsonl").read_text().splitlines()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0 and "] prompt 0" not in again.stdout
    assert (tmp_path / "images.jsonl").read_text().splitlines() == rows
