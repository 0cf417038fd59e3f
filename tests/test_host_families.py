"""The other model families in a real ComfyUI: small random-weight UNets that ComfyUI detects as SD2.x (SD20,
CLIP-H text encoder) and SDXL (CLIP-L + CLIP-G, ADM conditioning), built at test time like the SD1.5 one.

The text encoders are full size (ComfyUI's CLIP configs are fixed), so the SDXL checkpoint is ~2 GB in the temp dir.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from clip_reference import clip_reference_attention
from conftest import capture_graph, guide

pytestmark = pytest.mark.heavy  # builds full-size random CLIP-H and CLIP-G

PROMPT = "a black car and a white clock"

FAMILIES = {
    # layout: (ComfyUI model class, auto encoder, {encoder: (state-dict prefix, heads, activation, layers)})
    "tiny_sd2": ("SD20", "clip_h", {"clip_h": ("cond_stage_model.model.transformer.text_model.", 16, "gelu", 24)}),
    "tiny_sdxl": ("SDXL", "clip_l", {
        "clip_l": ("conditioner.embedders.0.transformer.text_model.", 12, "quick_gelu", 12),
        "clip_g": ("conditioner.embedders.1.model.transformer.text_model.", 20, "gelu", 32)}),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, host):
    import tiny_checkpoint

    layout = request.param
    name = f"{layout}.safetensors"
    path = host.checkpoint_path(name)
    if not path.exists():
        tiny_checkpoint.build(str(path), layout=layout, fp16=True, seed=0)
    model, clip, vae = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}})["c"][:3]
    return SimpleNamespace(layout=layout, name=name, path=path, model=model, clip=clip, vae=vae,
                           detected=FAMILIES[layout][0], auto=FAMILIES[layout][1], encoders=FAMILIES[layout][2])


def text_attention(host, family, encoder="auto"):
    out = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": family.name}},
                    "t": {"class_type": "AttentionAlignTextSelfAttention",
                          "inputs": {"clip": ["c", 1], "text": PROMPT, "encoder": encoder, "gamma": 3.0}}})
    return out["t"]


def test_family_is_detected_and_text_attention_equals_an_independent_computation(host, family):
    assert type(family.model.model.model_config).__name__ == family.detected
    sd = safetensors.torch.load_file(str(family.path))
    for encoder, (prefix, heads, activation, layers) in family.encoders.items():
        ta, image, conditioning = text_attention(host, family, encoder)
        assert ta.encoder == encoder and ta.probs.shape == (layers, heads, 77, 77)
        key = encoder.split("_")[1]
        ids = [tok for tok, _ in family.clip.tokenize(PROMPT)[key][0]]
        ref = clip_reference_attention(sd, prefix, ids, heads, activation)
        torch.testing.assert_close(ta.probs, ref, rtol=0, atol=5e-4)
        assert ref[:, :, 7, :8].max() > 0.5                    # peaked maps: a wrong layer or head would show
        # T: bos, eos and padding removed (SD2's CLIP-H pads with "!", not with eos)
        assert ta.eos_index == 8 and ta.target().shape == (7, 7)
        assert [w.label for w in ta.words] == ["a", "black", "car", "and", "a#2", "white", "clock"]
        torch.testing.assert_close(ta.target().sum(-1), torch.ones(7))
        # the conditioning is CLIP Text Encode's, whichever encoder the attention was read from
        plain = family.clip.encode_from_tokens_scheduled(family.clip.tokenize(PROMPT))
        assert torch.equal(conditioning[0][0], plain[0][0])
        assert all(torch.equal(conditioning[0][1][k], v) for k, v in plain[0][1].items() if torch.is_tensor(v))
    assert text_attention(host, family)[0].encoder == family.auto


def test_capture_and_guided_tsam_run_on_the_family(host, family):
    """Capture is exact, the maps sit at the family's levels, and T-SAM's updates lower its loss at the same sigma."""
    import nodes as comfy_nodes

    ta, _, pos = text_attention(host, family)
    neg = family.clip.encode_from_tokens_scheduled(family.clip.tokenize(""))
    latent = {"samples": torch.zeros(1, 4, 16, 16)}                         # 128 px

    def sample(model):
        return comfy_nodes.common_ksampler(model, 5, 5, 6.0, "euler", "normal", pos, neg, latent)[0]["samples"]

    captured = host.run(capture_graph(family.name, PROMPT, capture=True, steps=3, sampler="euler"))
    plain = host.run(capture_graph(family.name, PROMPT, capture=False, steps=3, sampler="euler"))
    assert torch.equal(captured["sample"][0]["samples"], plain["sample"][0]["samples"])
    rec = captured["capture"][1].records[-1]
    grid, labels = captured["viz"]                                          # the visualisation reads them too
    assert labels.splitlines() == ["a", "black", "car", "and", "a#2", "white", "clock", "T", "S"]
    assert grid.shape[-1] == 3 and 0 <= grid.min() and grid.max() <= 1
    # SD2's layout here has cross-attention at image ÷8, ÷16, ÷32; SDXL none at ÷8 (its first level has none)
    assert rec.levels() == ([8, 16, 32] if family.detected == "SD20" else [16, 32])
    assert [rec.size(v) for v in rec.levels()] == [(128 // v, 128 // v) for v in rec.levels()]
    for level in rec.levels():
        (h, w), maps = rec.size(level), rec.mean(level)
        assert maps.shape == (1, 77, h, w)
        torch.testing.assert_close(maps.sum(1), torch.ones(1, h, w), rtol=0, atol=1e-4)

    G, T = host.pack_module("nodes.host.guided"), host.pack_module("guidance.tsam")
    guidance = T.tsam_guidance(ta.target(), eos_index=ta.eos_index, prompt=ta.prompt, variant="paper", strength=10.0,
                               scale=5.0, guided_paper_steps=30, refine="off", context=ta.context)
    m, log = guide(G, family.model, guidance, verify=True)
    guided = sample(m)
    assert len(log.steps) == 3                                              # 30 of 50 → 3 of 5
    for rec in log.steps:
        assert torch.all(rec.loss_after < rec.loss_before), (rec.step, rec.loss_before, rec.loss_after)
    assert not torch.equal(guided, sample(family.model))
