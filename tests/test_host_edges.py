"""Careless-user input in a real ComfyUI: sizes that are not multiples of 64 (or of 8 in latent pixels), every
numeric input at its declared bounds, word lists that name nothing, non-ASCII words, runaway updates.

Each case either runs to a finite latent or fails with an error that names the input to change.
"""
from __future__ import annotations

import math

import pytest
import torch
from headless import ExecutionFailed

pytestmark = pytest.mark.heavy  # every input at its bounds, odd sizes: many sampling runs

PROMPT = "a red car and a blue bench"

#: method node → its word-list inputs (kept at typed values so no case depends on the automatic mode)
METHODS = {
    "AttentionAlignTSAM": {"loss": "paper", "refine": "official"},
    "AttentionAlignAttendExcite": {"subjects": "car, bench", "parser": "builtin", "softmax": "official"},
    "AttentionAlignSynGen": {"groups": "red car; blue bench", "parser": "builtin"},
    "AttentionAlignAttentionRegulation": {"targets": "car, bench", "parser": "builtin"},
    "AttentionAlignAttentionModulation": {"entities": "red car; blue bench", "parser": "builtin"},
}
GRADIENT = ["AttentionAlignTSAM", "AttentionAlignAttendExcite", "AttentionAlignSynGen"]


def defaults(host, class_type: str) -> dict:
    """The node's declared defaults for every widget input, the typed word lists of METHODS on top."""
    values = {}
    for name, (_kind, *rest) in host.input_order(class_type):
        opts = rest[0] if rest else {}
        if "default" in opts:
            values[name] = opts["default"]
    return {**values, **METHODS.get(class_type, {})}


def numeric_bounds(host, class_type: str) -> list[tuple[str, float]]:
    """``(input, value)`` for every INT/FLOAT input at its declared min and at its declared max."""
    cases = []
    for name, (kind, *rest) in host.input_order(class_type):
        if kind in ("INT", "FLOAT"):
            opts = rest[0]
            cases += [(name, opts["min"]), (name, opts["max"])]
    return cases


def graph(ckpt, class_type: str, inputs: dict, width=128, height=128, steps=2, sampler="euler",
          prompt=PROMPT) -> dict:
    return {
        "c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "t": {"class_type": "AttentionAlignTextSelfAttention",
              "inputs": {"clip": ["c", 1], "text": prompt, "encoder": "auto", "gamma": 3.0}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 1], "text": ""}},
        "m": {"class_type": class_type, "inputs": {"text_attention": ["t", 0], **inputs}},
        "l": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "s": {"class_type": "AttentionAlignGuidedKSampler", "inputs": {
            "model": ["c", 0], "guidance": ["m", 0], "seed": 1, "steps": steps, "cfg": 7.0, "sampler_name": sampler,
            "scheduler": "normal", "positive": ["t", 2], "negative": ["n", 0], "latent_image": ["l", 0],
            "denoise": 1.0}},
        "p": {"class_type": "KSampler", "inputs": {
            "model": ["c", 0], "seed": 1, "steps": steps, "cfg": 7.0, "sampler_name": sampler,
            "scheduler": "normal", "positive": ["t", 2], "negative": ["n", 0], "latent_image": ["l", 0],
            "denoise": 1.0}},
    }


def rms(t: torch.Tensor) -> float:
    return float(t.float().pow(2).mean().sqrt())


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize("width, height", [(120, 72), (200, 136)])
@pytest.mark.parametrize("class_type", list(METHODS))
def test_every_method_runs_at_sizes_that_are_not_multiples_of_64(host, tiny_ckpt, class_type, width, height):
    """120×72 px = a 15×9 latent: the UNet rounds odd sizes up (8×5, 4×3), so map sizes do not divide the
    latent's; the layers are found by structure and the official level (÷32) still works."""
    inputs = {**defaults(host, class_type), **({"refine": "off"} if class_type == "AttentionAlignTSAM" else {})}
    out = host.run(graph(tiny_ckpt, class_type, inputs, width, height))
    latent, maps, log = out["s"]
    assert latent["samples"].shape == (1, 4, height // 8, width // 8) and latent["samples"].isfinite().all()
    assert maps.levels() == [32] and maps.size(32) == (-(-height // 32), -(-width // 32))
    if class_type in GRADIENT:
        assert [r.step for r in log.steps] == [0] and log.steps[0].loss_before.isfinite().all()   # 2 steps: 1 guided
        assert not torch.equal(latent["samples"], out["p"][0]["samples"])          # it guided


@pytest.mark.parametrize("class_type, level, outcome", [
    ("AttentionAlignTSAM", 32, "level: at 16×16 px T-SAM reads maps of 1×1 at image ÷32, but needs at least 2×2; "
                               "levels that work at this size: 8"),
    ("AttentionAlignTSAM", 8, None),
    ("AttentionAlignAttendExcite", 32, "levels that work at this size: 8"),
    ("AttentionAlignAttendExcite", 8, None),
    ("AttentionAlignSynGen", 32, None),
    ("AttentionAlignAttentionRegulation", 8, "no cross-attention level of this model is large enough"),
    ("AttentionAlignAttentionModulation", None, None),
])
def test_the_smallest_image_runs_or_names_the_level_that_works(host, tiny_ckpt, class_type, level, outcome):
    """16×16 px: the latent is 2×2 and every coarser level is 1×1 (so map sizes cannot tell levels apart)."""
    inputs = defaults(host, class_type)
    if level is not None:
        inputs["level"] = level
    g = graph(tiny_ckpt, class_type, inputs, 16, 16)
    if outcome is None:
        latent = host.run(g)["s"][0]["samples"]
        assert latent.shape == (1, 4, 2, 2) and latent.isfinite().all()
    else:
        with pytest.raises(ExecutionFailed, match="^node s .*level: ") as err:
            host.run(g)
        assert outcome in err.value.exception_message


def test_regulation_at_64_px_says_which_level_works_before_sampling(host, tiny_ckpt):
    g = graph(tiny_ckpt, "AttentionAlignAttentionRegulation", defaults(host, "AttentionAlignAttentionRegulation"),
              64, 64)
    with pytest.raises(ExecutionFailed) as err:
        host.run(g)
    assert err.value.exception_message.strip() == ("level: at 64×64 px Attention Regulation reads maps of 2×2 at image ÷32, "
                                           "but needs at least 3×3; levels that work at this size: 8, 16")
    assert "common_ksampler" not in err.value.args[0]          # refused by the node itself, before sampling


def test_capture_and_visualise_keep_levels_apart_at_16_px(host, tiny_ckpt):
    from conftest import capture_graph

    out = host.run(capture_graph(tiny_ckpt, size=16, steps=2, words="car, bench"))
    rec = out["capture"][1].records[-1]
    assert rec.levels() == [8, 16, 32] and [rec.size(v) for v in rec.levels()] == [(2, 2), (1, 1), (1, 1)]
    assert len(rec.layers_seen) == 10
    for level in rec.levels():
        torch.testing.assert_close(rec.mean(level).sum(1), torch.ones(1, *rec.size(level)), rtol=0, atol=1e-5)
    grid, labels = out["viz"]
    assert grid.isfinite().all() and labels.splitlines()[:2] == ["car", "bench"]


# ------------------------------------------------------------------------------------------------ bounds
@pytest.mark.parametrize("class_type", list(METHODS))
def test_every_numeric_input_at_its_declared_bounds(host, tiny_ckpt, class_type):
    """Each input of the method node at its declared min and at its declared max (read from the node's schema),
    the others at their defaults (96 px, the smallest size where every default level works; 2 steps): a finite
    latent of plain sampling's magnitude, or — for a level this model does not have — an error that names
    ``level``. Every failing case is listed."""
    levels = {8, 16, 32}                                     # the tiny model's cross-attention levels
    failures = []
    for name, value in numeric_bounds(host, class_type):
        g = graph(tiny_ckpt, class_type, {**defaults(host, class_type), name: value}, 96, 96)
        try:
            out = host.run(g)
        except ExecutionFailed as err:
            if not (name == "level" and value not in levels and err.exception_message.startswith("level: ")):
                failures.append(f"{name}={value}: {err.exception_type}: {err.exception_message}")
            continue
        if name == "level" and value not in levels:
            failures.append(f"{name}={value}: accepted a level the model does not have")
            continue
        latent = out["s"][0]["samples"]
        if not latent.isfinite().all() or rms(latent) > 10 * rms(out["p"][0]["samples"]):
            failures.append(f"{name}={value}: latent RMS {rms(latent):.3g} vs plain {rms(out['p'][0]['samples']):.3g}")
    assert failures == []


def test_text_attention_gamma_and_visualise_columns_at_their_bounds(host, tiny_ckpt):
    from conftest import capture_graph

    for gamma in (0.1, 10.0):
        for columns in (1, 16):
            g = capture_graph(tiny_ckpt, size=64, steps=1)
            g["text"]["inputs"]["gamma"] = gamma
            g["viz"]["inputs"]["columns"] = columns
            out = host.run(g)
            assert out["text"][0].target().isfinite().all() and out["viz"][0].isfinite().all()


def test_the_guided_schedule_at_the_largest_step_count():
    """KSampler's own bound, 10000 steps, is too slow to sample here; its plan is checked in pure code."""
    from attention_align.guidance.tsam import tsam_guidance

    plan = tsam_guidance(torch.eye(6), eos_index=7, prompt="a b c d e f").plan(10000)
    assert len(plan.guided) == 6000 and all(math.isfinite(a) and a > 0 for a in plan.alphas.values())


# ------------------------------------------------------------------------------------------------ words
@pytest.mark.parametrize("class_type, field, spec, message", [
    ("AttentionAlignAttendExcite", "subjects", ",,,", "subjects: ',,,' names no word"),
    ("AttentionAlignAttentionRegulation", "targets", " , ", "targets: ' , ' names no word"),
    ("AttentionAlignSynGen", "groups", "red;", "groups: 'red' is a group of 1 word; a group needs at least 2"),
    ("AttentionAlignSynGen", "groups", ";;", "groups: ';;' names no group"),
])
def test_word_lists_that_name_nothing_are_errors(host, tiny_ckpt, class_type, field, spec, message):
    g = graph(tiny_ckpt, class_type, {**defaults(host, class_type), field: spec})
    with pytest.raises(ExecutionFailed) as err:
        host.run(g)
    assert err.value.exception_message.startswith(message)


def test_modulation_takes_a_bare_noun_as_an_entity(host, tiny_ckpt):
    inputs = {**defaults(host, "AttentionAlignAttentionModulation"), "entities": "car; blue bench"}
    out = host.run(graph(tiny_ckpt, "AttentionAlignAttentionModulation", inputs))
    assert out["m"][1] == "entities: car[3]; blue[6] bench[7]"


def test_non_ascii_words_are_typed_shown_and_matched_as_text(host, tiny_ckpt, comfy_path):
    from attention_align.guidance.tokens import decode_pieces
    from transformers import CLIPTokenizer

    prompt = "a café next to a 🐶 in münchen"
    g = graph(tiny_ckpt, "AttentionAlignAttendExcite", {**defaults(host, "AttentionAlignAttendExcite"),
                                                        "subjects": "Café, 🐶, münchen"}, prompt=prompt)
    g["show"] = {"class_type": "AttentionAlignShowTokens", "inputs": {
        "text_attention": ["t", 0], "subjects": "café", "groups": "", "parser": "builtin"}}
    out = host.run(g)
    ta = out["t"][0]
    assert [w.text for w in ta.words] == ["a", "café", "next", "to", "a", "🐶", "in", "münchen"]
    assert out["m"][1].startswith("subjects: café[2], 🐶[6], münchen[")
    assert "2:café" in out["show"][0] and "🐶" in out["show"][0] and "Ã" not in out["show"][0]
    # the decoder agrees with the tokenizer's own on every piece of the vocabulary ComfyUI ships
    tok = CLIPTokenizer.from_pretrained(str(comfy_path / "comfy" / "sd1_tokenizer"))
    vocab = list(tok.get_vocab())
    assert len(vocab) == 49408
    mismatched = [p for p in vocab if decode_pieces([p]) != tok.convert_tokens_to_string([p]).replace("</w>", "")]
    assert mismatched == []


# ------------------------------------------------------------------------------------------------ runaway
def test_a_runaway_update_is_stopped_and_reported(host, tiny_ckpt, caplog):
    """Strength 100 × scale 1000 (both allowed): the update is undone, guidance stops for the sample, the log and
    the console say so, and the latent stays at the magnitude of plain sampling."""
    inputs = {**defaults(host, "AttentionAlignAttendExcite"), "strength": 100.0, "scale_factor": 1000.0}
    with caplog.at_level("WARNING"):
        out = host.run(graph(tiny_ckpt, "AttentionAlignAttendExcite", inputs, steps=4), fresh=True)
    latent, log = out["s"][0]["samples"], out["s"][2]
    plain = out["p"][0]["samples"]
    assert bool(log.steps[0].halted[0]) and float(log.steps[0].update_ratio[0]) > 1.0
    assert any("not guided for the rest of the run" in n for n in log.notes)
    assert any("not guided for the rest of the run" in r.getMessage() for r in caplog.records)
    assert rms(latent) < 2 * rms(plain)
    official = host.run(graph(tiny_ckpt, "AttentionAlignAttendExcite", defaults(host, "AttentionAlignAttendExcite"),
                              steps=4), fresh=True)["s"][2]
    assert not any(bool(r.halted.any()) for r in official.steps)                 # official settings: never
    assert max(float(r.update_ratio.max()) for r in official.steps) < 0.5


def test_the_guided_ksampler_inputs_at_their_declared_bounds(host, tiny_ckpt):
    """seed, steps (its min; the max is covered above), cfg and denoise at their bounds, with Attend-and-Excite."""
    failures = []
    for name, value in numeric_bounds(host, "AttentionAlignGuidedKSampler"):
        if name == "steps" and value > 1:
            continue
        g = graph(tiny_ckpt, "AttentionAlignAttendExcite", defaults(host, "AttentionAlignAttendExcite"))
        g["s"]["inputs"][name] = value
        try:
            latent = host.run(g)["s"][0]["samples"]
        except ExecutionFailed as err:
            failures.append(f"{name}={value}: {err.exception_type}: {err.exception_message}")
            continue
        if not latent.isfinite().all():
            failures.append(f"{name}={value}: not finite")
    assert failures == []
