"""The one change a guided run makes to the shared model: its inference-tensor weights become equal normal tensors.

The README promises that every other user of the model sees the same numbers and the same memory. Checked here:
values bit for bit, one tensor per weight (the old ones are freed, never two copies), plain sampling, LoRA patch and
unpatch, a second guided run, and ComfyUI's cast-per-layer path (what its partial loading uses on a GPU).
"""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from conftest import guide

pytestmark = pytest.mark.heavy  # LoRA, cast-per-layer and repeated guided runs

PROMPT = "a black car and a white clock"


@pytest.fixture(scope="module")
def env(host, tiny_ckpt):
    from types import SimpleNamespace

    def load():
        out = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}},
                        "t": {"class_type": "AttentionAlignTextSelfAttention",
                              "inputs": {"clip": ["c", 1], "text": PROMPT, "encoder": "auto", "gamma": 3.0}}},
                       fresh=True)
        return out["c"][0], out["c"][1], out["t"]
    return SimpleNamespace(host=host, load=load, G=host.pack_module("nodes.host.guided"),
                           T=host.pack_module("guidance.tsam"), W=host.pack_module("nodes.host.weights"))


def tsam(env, ta, strength=10.0):
    return env.T.tsam_guidance(ta.target(), eos_index=ta.eos_index, prompt=ta.prompt, strength=strength,
                               refine="off", context=ta.context)


def sample(model, clip, pos, seed=4):
    import nodes as comfy_nodes

    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return comfy_nodes.common_ksampler(model, seed, 3, 6.0, "euler", "normal", pos,  neg,
                                       {"samples": torch.zeros(1, 4, 16, 16)})[0]["samples"]


def weights(model):
    unet = model.model.diffusion_model
    return {name: t for name, t in [*unet.named_parameters(), *unet.named_buffers()]}


def test_the_swap_keeps_every_value_and_frees_the_old_tensors(env):
    model, _, _ = env.load()
    # the values as bytes (a clone of an inference tensor would keep the original alive and spoil the last check)
    values = {name: (t.dtype, t.detach().cpu().numpy().tobytes()) for name, t in weights(model).items()}
    old = {name: weakref.ref(t) for name, t in weights(model).items() if t.is_inference()}
    assert old                                                             # ComfyUI loaded them in inference mode
    sizes = sum(t.numel() * t.element_size() for t in weights(model).values())
    swapped = env.W.deinference_(model.model.diffusion_model)
    gc.collect()
    after = weights(model)
    assert swapped == len(old) and not any(t.is_inference() for t in after.values())
    assert {n: (t.dtype, t.detach().cpu().numpy().tobytes()) for n, t in after.items()} == values   # same numbers
    assert sum(t.numel() * t.element_size() for t in after.values()) == sizes
    assert all(ref() is None for ref in old.values())                      # no second copy is held anywhere
    assert env.W.deinference_(model.model.diffusion_model) == 0            # idempotent


def test_plain_sampling_lora_and_a_second_guided_run_see_the_same_numbers(env, tmp_path):
    import comfy.lora
    import comfy.sd

    model, clip, (ta, _, pos) = env.load()
    plain = sample(model, clip, pos)
    unet = model.model.diffusion_model
    keys = [n[:-len(".weight")] for n, _ in unet.named_parameters() if n.endswith("attn2.to_q.weight")]
    g = torch.Generator().manual_seed(0)
    lora = {}
    for key in keys:
        w = dict(unet.named_parameters())[key + ".weight"]
        lora[f"lora_unet_{key.replace('.', '_')}.lora_up.weight"] = torch.randn(w.shape[0], 2, generator=g) * 0.2
        lora[f"lora_unet_{key.replace('.', '_')}.lora_down.weight"] = torch.randn(2, w.shape[1], generator=g) * 0.2
    lora_model, _ = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 0.0)
    with_lora = sample(lora_model, clip, pos)
    assert not torch.equal(with_lora, plain)

    m, first = guide(env.G, model, tsam(env, ta))
    guided_once = sample(m, clip, pos)
    m, second = guide(env.G, model, tsam(env, ta))
    guided_twice = sample(m, clip, pos)
    assert torch.equal(guided_once, guided_twice)                          # a second guided run: the same numbers
    assert all(torch.equal(a.loss_before, b.loss_before) for a, b in zip(first.steps, second.steps))
    assert torch.equal(sample(model, clip, pos), plain)                    # plain sampling after guided runs
    assert torch.equal(sample(lora_model, clip, pos), with_lora)           # LoRA patch after the swap
    assert torch.equal(sample(model, clip, pos), plain)                    # and unpatched again
    m, lora_log = guide(env.G, lora_model, tsam(env, ta, strength=0.0))
    sample(m, clip, pos)
    m, base_log = guide(env.G, model, tsam(env, ta, strength=0.0))
    sample(m, clip, pos)
    assert not torch.equal(lora_log.steps[0].loss_before, base_log.steps[0].loss_before)   # the pass saw the LoRA


def test_the_cast_per_layer_path_of_partial_loading_gives_the_same_guided_run(env):
    """ComfyUI's partial (lowvram) loading makes layers cast their weights on every forward
    (``comfy_cast_weights``); the gradient pass then differentiates through those casts. Same loss, same update."""
    model, clip, (ta, _, pos) = env.load()
    m, full = guide(env.G, model, tsam(env, ta), verify=True)
    full_x = sample(m, clip, pos)
    casting = [mod for mod in model.model.diffusion_model.modules() if hasattr(mod, "comfy_cast_weights")]
    assert casting
    try:
        for mod in casting:
            mod.comfy_cast_weights = True
        m, cast = guide(env.G, model, tsam(env, ta), verify=True)
        cast_x = sample(m, clip, pos)
    finally:
        for mod in casting:
            mod.comfy_cast_weights = False
    assert all(torch.equal(a.loss_before, b.loss_before) and torch.equal(a.x_after, b.x_after)
               for a, b in zip(full.steps, cast.steps))
    assert torch.equal(full_x, cast_x)
