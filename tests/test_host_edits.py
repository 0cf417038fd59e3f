"""Attention Regulation and Attention Modulation as model patches in a real ComfyUI, with several samplers."""
from __future__ import annotations

import pytest
import torch

PROMPT = "a red car and a blue bench"
SAMPLERS = ["euler", "dpmpp_2m", "heun", "uni_pc"]


def graph(ckpt, method: dict, sampler="euler", size=128, steps=4, seed=1, batch=1, guided_ksampler=False) -> dict:
    g = {
        "c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "t": {"class_type": "AttentionAlignTextSelfAttention",
              "inputs": {"clip": ["c", 1], "text": PROMPT, "encoder": "auto", "gamma": 3.0}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 1], "text": ""}},
        "m": {**method, "inputs": {"text_attention": ["t", 0], **method["inputs"]}},
        "a": {"class_type": "AttentionAlignApplyGuidance", "inputs": {"model": ["c", 0], "guidance": ["m", 0]}},
        "l": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
    }
    ks = {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": sampler, "scheduler": "normal",
          "positive": ["t", 2], "negative": ["n", 0], "latent_image": ["l", 0], "denoise": 1.0}
    g["plain"] = {"class_type": "KSampler", "inputs": {"model": ["c", 0], **ks}}
    if guided_ksampler:
        g["s"] = {"class_type": "AttentionAlignGuidedKSampler", "inputs": {"model": ["c", 0], "guidance": ["m", 0], **ks}}
    else:
        g["s"] = {"class_type": "KSampler", "inputs": {"model": ["a", 0], **ks}}
    return g


def regulation(seed=0, level=16, targets="car, bench", learning_rate=10.0):
    """The official settings but lr 10: with lr 100 (official, tuned to SD's logits) the random tiny model's 8×8
    layers overshoot and the keep-best rule keeps the initial bias, so the loss could not be seen to fall."""
    return {"class_type": "AttentionAlignAttentionRegulation", "inputs": {
        "targets": targets, "parser": "builtin", "seed": seed, "edit_steps": 25, "iterations": 20,
        "learning_rate": learning_rate, "level": level}}


def modulation(temperature=0.8, mask_until=0.4, noun_weight=1.5, attribute_weight=1.5):
    return {"class_type": "AttentionAlignAttentionModulation", "inputs": {
        "entities": "", "parser": "builtin", "temperature": temperature, "temperature_until": 0.3,
        "mask_until": mask_until, "noun_weight": noun_weight, "attribute_weight": attribute_weight, "switch": 0.5}}


@pytest.mark.heavy
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_attention_regulation_edits_deterministically_with_any_sampler(host, tiny_ckpt, sampler):
    out = host.run(graph(tiny_ckpt, regulation(seed=3), sampler), fresh=True)
    edited, plain, log = out["s"][0]["samples"], out["plain"][0]["samples"], out["a"][1].records[-1]
    assert out["m"][1] == "targets: car[3], bench[7]"
    assert not torch.allclose(edited, plain)
    again = host.run(graph(tiny_ckpt, regulation(seed=3), sampler), fresh=True)["s"][0]["samples"]
    assert torch.equal(again, edited)                                     # seeded: the same result
    other = host.run(graph(tiny_ckpt, regulation(seed=4), sampler), fresh=True)["s"][0]["samples"]
    assert not torch.equal(other, edited)
    assert [r.step for r in log.steps] == [0, 1]                          # 25 of 50 → 2 of 4 steps
    assert all(r.loss_final <= r.loss_before for r in log.steps)
    assert any(r.loss_final < r.loss_before for r in log.steps)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


@pytest.mark.heavy
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_neutral_modulation_is_the_stock_model_and_real_settings_change_it(host, tiny_ckpt, sampler):
    neutral = host.run(graph(tiny_ckpt, modulation(1.0, 0.0, 1.0, 1.0), sampler))
    assert torch.equal(neutral["s"][0]["samples"], neutral["plain"][0]["samples"])
    for settings in (modulation(0.7, 0.0, 1.0, 1.0), modulation(1.0, 0.6, 1.0, 1.0), modulation(1.0, 0.0, 2.0, 1.0)):
        out = host.run(graph(tiny_ckpt, settings, sampler))
        assert not torch.equal(out["s"][0]["samples"], out["plain"][0]["samples"]), settings
    assert host.run(graph(tiny_ckpt, modulation(), sampler))["m"][1] == "entities (builtin): red car; blue bench"


def test_edits_are_options_of_the_guided_ksampler_too(host, tiny_ckpt):
    out = host.run(graph(tiny_ckpt, regulation(seed=3), "euler", guided_ksampler=True, batch=2))
    via_patch = host.run(graph(tiny_ckpt, regulation(seed=3), "euler", batch=2))["s"][0]["samples"]
    assert torch.equal(out["s"][0]["samples"], via_patch)
    maps = out["s"][1]
    assert maps.levels() == [16]                          # captured at the regulated level (÷16 at 128 px)
    assert maps.mean(16).shape == (2, 77, 8, 8)


def test_regulated_maps_put_more_mass_on_the_targets(host, tiny_ckpt):
    """The regulation pushes each target's mean attention toward 0.2 from below (its 'similar proportions' term)."""
    def target_mass(method):
        g = graph(tiny_ckpt, method, "euler", steps=4)
        g["cap"] = {"class_type": "AttentionAlignCaptureCrossAttention",
                    "inputs": {"model": ["a", 0], "levels": 16, "record_steps": False}}
        g["s"]["inputs"]["model"] = ["cap", 0]
        maps = host.run(g, fresh=True)["cap"][1].records[-1].mean(16)     # image ÷16: the 8×8 maps at 128 px
        return maps[:, [3, 7]].mean().item()

    neutral = target_mass(modulation(1.0, 0.0, 1.0, 1.0))
    assert target_mass(regulation(seed=0)) > neutral


def test_a_foreign_attention_replace_cannot_be_edited(host, tiny_ckpt):
    out = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}},
                    "t": {"class_type": "AttentionAlignTextSelfAttention",
                          "inputs": {"clip": ["c", 1], "text": PROMPT, "encoder": "auto", "gamma": 3.0}}})
    model, ta = out["c"][0], out["t"][0]
    other = model.clone()
    other.set_model_attn2_replace(lambda q, k, v, extra: q, "input", 5, 0)
    guidance = host.node_class("AttentionAlignAttentionRegulation").execute(ta, "car", "builtin", 0, 25, 20, 100.0,
                                                                            32).args[0]
    with pytest.raises(ValueError, match=r"cross-attention layer \('input', 5, 0\) is already replaced by another "
                                         "node pack"):
        host.node_class("AttentionAlignApplyGuidance").execute(other, guidance)


def test_edit_methods_check_the_positive_prompt(host, tiny_ckpt):
    from headless import ExecutionFailed

    g = graph(tiny_ckpt, regulation())
    g["p"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 1], "text": "a dog on a sofa"}}
    g["s"]["inputs"]["positive"] = ["p", 0]
    with pytest.raises(ExecutionFailed, match="positive: the positive conditioning is not the prompt"):
        host.run(g)


def test_edit_nodes_name_their_own_inputs(host, tiny_ckpt):
    """Targets and entities share the subject/group resolution; their descriptions and errors name their own input."""
    ta = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}},
                   "t": {"class_type": "AttentionAlignTextSelfAttention",
                         "inputs": {"clip": ["c", 1], "text": PROMPT, "encoder": "auto", "gamma": 3.0}}})["t"][0]
    regulate = host.node_class("AttentionAlignAttentionRegulation").execute
    modulate = host.node_class("AttentionAlignAttentionModulation").execute
    assert regulate(ta, "car", "builtin", 0, 25, 20, 100.0, 32).args[1] == "targets: car[3]"
    assert modulate(ta, "red car", "builtin", 0.8, 0.3, 0.4, 1.5, 1.5, 0.5).args[1] == "entities: red[2] car[3]"
    with pytest.raises(ValueError, match="^targets: 'dog' is not a word of the prompt"):
        regulate(ta, "dog", "builtin", 0, 25, 20, 100.0, 32)
    with pytest.raises(ValueError, match="^entities: 'dog' is not a word of the prompt"):
        modulate(ta, "red dog", "builtin", 0.8, 0.3, 0.4, 1.5, 1.5, 0.5)
