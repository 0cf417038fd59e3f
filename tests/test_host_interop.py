"""Other attention packs beside this one, in either order, in a real ComfyUI on the tiny model.

Each stand-in reproduces the protocol its pack relies on, as read in that pack's code (IPAdapter Plus
``IPAdapterPlus.set_model_patch_replace`` + ``CrossAttentionPatch.Attn2Replace``; sd-perturbed-attention's NAG and
PLADIS; comfyui-daam's in-place patching; prompt-control's Attention Couple ``attn2_patch``/``attn2_output_patch``).
Core's PAG and SAG are ComfyUI's own nodes, used as they are.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.heavy  # many sampling runs with other packs' stand-ins

PROMPT = "a red car and a blue bench"


@pytest.fixture(scope="module")
def env(host, tiny_ckpt):
    out = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}},
                    "t": {"class_type": "AttentionAlignTextSelfAttention",
                          "inputs": {"clip": ["c", 1], "text": PROMPT, "encoder": "auto", "gamma": 3.0}}})
    model, clip, _ = out["c"][:3]
    ta, _, pos = out["t"]
    keys = [layer.key for layer in host.pack_module("nodes.host.backend").backend_of(model).layers()]
    return SimpleNamespace(host=host, model=model, clip=clip, ta=ta, pos=pos, keys=keys,
                           neg=clip.encode_from_tokens_scheduled(clip.tokenize("")),
                           G=host.pack_module("nodes.host.guided"), node=host.node_class)


def sample(env, model, seed=2, steps=3, cfg=6.0, negative=None):
    import nodes as comfy_nodes

    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    return comfy_nodes.common_ksampler(model, seed, steps, cfg, "euler", "normal", env.pos, negative or env.neg,
                                       latent)[0]["samples"]


def attention(q, k, v, heads):
    import comfy.ldm.modules.attention as comfy_attention

    return comfy_attention.optimized_attention(q, k, v, heads)


def capture(env, model):
    return env.G.captured_model(model, None)


def regulated(env, model):
    guidance = env.node("AttentionAlignAttentionRegulation").execute(env.ta, "car, bench", "builtin", 1, 25, 20,
                                                                     10.0, 16).args[0]
    return env.G.guided_model(model, guidance)


# -------------------------------------------------------------------------------------------- IPAdapter Plus
class FakeIPAdapterReplace:
    """IPAdapter Plus's Attn2Replace as read: its own attention plus every added term, gated by σ."""

    def __init__(self, callback, **kwargs):
        self.callback, self.kwargs = [callback], [kwargs]

    def add(self, callback, **kwargs):
        self.callback.append(callback)
        self.kwargs.append(kwargs)

    def to(self, device):
        return self

    def __call__(self, q, k, v, extra_options):
        out = attention(q, k, v, extra_options["n_heads"])
        sigma = extra_options["sigmas"].detach().cpu()[0].item() if "sigmas" in extra_options else 999999999.9
        for callback, kwargs in zip(self.callback, self.kwargs):
            if kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(dtype=q.dtype)


def image_term(out, q, k, v, extra_options, weight=1.0, **kwargs):
    """IPAdapter's decoupled attention to image tokens: 4 fixed tokens per layer width, per cond_or_uncond chunk."""
    g = torch.Generator().manual_seed(q.shape[-1])
    ip_k = torch.randn(1, 4, q.shape[-1], generator=g).to(q) * 3
    ip_v = torch.randn(1, 4, q.shape[-1], generator=g).to(q) * 3
    b = q.shape[0]
    return weight * attention(q, ip_k.expand(b, -1, -1), ip_v.expand(b, -1, -1), extra_options["n_heads"])


def apply_ipadapter(model, keys, weight=1.0):
    """IPAdapter's set_model_patch_replace, per key: a new Attn2Replace where the key is free, else ``.add`` on
    whatever sits there (no type check, no write-back)."""
    m = model.clone()
    kwargs = dict(weight=weight, sigma_start=999999999.9, sigma_end=0.0, module_key="1")
    for key in keys:
        to = m.model_options["transformer_options"].copy()
        to["patches_replace"] = dict(to.get("patches_replace", {}))
        to["patches_replace"]["attn2"] = dict(to["patches_replace"].get("attn2", {}))
        if key not in to["patches_replace"]["attn2"]:
            to["patches_replace"]["attn2"][key] = FakeIPAdapterReplace(image_term, **kwargs)
            m.model_options["transformer_options"] = to
        else:
            to["patches_replace"]["attn2"][key].add(image_term, **kwargs)
    return m


@pytest.mark.parametrize("key_form", [2, 3], ids=["sd15-2-part-keys", "sdxl-3-part-keys"])
def test_ipadapter_and_capture_compose_in_either_order(env, key_form):
    keys = [key[:key_form] for key in env.keys]
    stock, ipa = sample(env, env.model), sample(env, apply_ipadapter(env.model, keys))
    assert not torch.allclose(stock, ipa, atol=1e-3)                      # the image term matters
    captured, board = capture(env, env.model)
    after = sample(env, apply_ipadapter(captured, keys))                   # ours first: IPAdapter calls our .add
    ipa_first, board2 = capture(env, apply_ipadapter(env.model, keys))
    before = sample(env, ipa_first)                                        # IPAdapter first: we take it over
    torch.testing.assert_close(after, ipa, rtol=0, atol=1e-5)
    torch.testing.assert_close(before, ipa, rtol=0, atol=1e-5)
    for b in (board, board2):
        assert set(env.keys) <= b.records[-1].layers_seen
    assert torch.equal(sample(env, captured), sample(env, capture(env, env.model)[0]))   # no .add leaked upstream


@pytest.mark.parametrize("key_form", [2, 3], ids=["sd15-2-part-keys", "sdxl-3-part-keys"])
def test_an_attention_edit_and_ipadapter_give_the_same_image_in_either_order(env, key_form):
    keys = [key[:key_form] for key in env.keys]
    edit_then_ipa = sample(env, apply_ipadapter(regulated(env, env.model)[0], keys))
    ipa_then_edit = sample(env, regulated(env, apply_ipadapter(env.model, keys))[0])
    torch.testing.assert_close(edit_then_ipa, ipa_then_edit, rtol=0, atol=1e-5)
    assert not torch.allclose(edit_then_ipa, sample(env, regulated(env, env.model)[0]), atol=1e-3)   # IP term in
    assert not torch.allclose(edit_then_ipa, sample(env, apply_ipadapter(env.model, keys)), atol=1e-3)  # edit in


# ----------------------------------------------------------------------------------- sd-perturbed-attention
def apply_nag(model, keys):
    """NAG: a 3-part replace on every layer that calls the previous replace (2-part key looked up first)."""
    m = model.clone()
    for key in keys:
        attn2 = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
        prev = attn2.get(key[:2], attn2.get(key))

        def nag(q, k, v, extra_options, prev=prev):
            z = prev(q, k, v, extra_options) if prev is not None else attention(q, k, v, extra_options["n_heads"])
            return z * 1.1
        m.set_model_attn2_replace(nag, *key)
    return m


def apply_pladis(model, keys):
    """PLADIS: a 3-part replace on the input/output layers, computing its own attention, chaining to nothing."""
    m = model.clone()
    for key in keys:
        if key[0] != "middle":
            m.set_model_attn2_replace(lambda q, k, v, eo: attention(q, k, v, eo["n_heads"]) * 0.9 + 0.01, *key)
    return m


@pytest.mark.parametrize("pack", [apply_nag, apply_pladis], ids=["NAG", "PLADIS"])
def test_chaining_and_overwriting_packs_compose_with_capture_in_either_order(env, pack):
    alone = sample(env, pack(env.model, env.keys))
    assert not torch.allclose(alone, sample(env, env.model), atol=1e-3)
    captured, board = capture(env, env.model)
    ours_first = sample(env, pack(captured, env.keys))                    # PLADIS overwrote our routers
    theirs_first, board2 = capture(env, pack(env.model, env.keys))
    assert torch.equal(ours_first, alone) and torch.equal(sample(env, theirs_first), alone)
    for b in (board, board2):                                             # and the maps were still recorded
        assert set(env.keys) <= b.records[-1].layers_seen


def test_an_edit_refuses_an_opaque_replace_naming_it(env):
    with pytest.raises(ValueError, match=r"replaced by another node pack \(.*apply_pladis.*\); an attention edit "
                                         r"cannot go through it\. Apply the edit .* before that pack's node"):
        regulated(env, apply_pladis(env.model, env.keys))
    edited, _ = regulated(env, env.model)                                 # the edit first: PLADIS wins its layers
    with pytest.raises(ValueError, match="an attention edit cannot go through it"):
        sample(env, apply_pladis(edited, env.keys))


# --------------------------------------------------------------------------------------------------- DAAM
def test_a_sampler_that_patches_the_model_in_place_is_observed_through(env):
    """comfyui-daam's KSampler patches the model it gets in place (no clone), samples, then restores the saved
    options; our router takes its replace over for that run, so both record."""
    captured, board = capture(env, env.model)
    daam_calls = []

    def daam(q, context=None, value=None, extra_options=None, mask=None):
        daam_calls.append(tuple(extra_options["cond_or_uncond"]))
        return attention(q, context, value, extra_options["n_heads"])

    saved = captured.model_options.copy()
    for key in env.keys:
        captured.set_model_patch_replace(daam, "attn2", *key)
    result = sample(env, captured)
    captured.model_options = saved
    assert daam_calls and set(env.keys) <= board.records[-1].layers_seen
    torch.testing.assert_close(result, sample(env, env.model), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------- core PAG, SAG
def pag(env, model, scale=3.0):
    return env.node("PerturbedAttentionGuidance").execute(model, scale).args[0]


def sag(env, model, scale=0.8):
    return env.node("SelfAttentionGuidance").execute(model, scale, 2.0).args[0]


def modulated(env, model):
    guidance = env.node("AttentionAlignAttentionModulation").execute(env.ta, "", "builtin", 0.5, 1.0, 0.0, 1.0, 1.0,
                                                                      0.5).args[0]
    return env.G.guided_model(model, guidance)[0]


@pytest.mark.parametrize("other", [pag, sag], ids=["PAG", "SAG"])
def test_core_pag_and_sag_compose_with_capture_and_the_temperature_in_either_order(env, other):
    alone = sample(env, other(env, env.model))
    captured, board = capture(env, env.model)
    torch.testing.assert_close(sample(env, other(env, captured)), alone, rtol=0, atol=0)
    theirs_first, _ = capture(env, other(env, env.model))
    torch.testing.assert_close(sample(env, theirs_first), alone, rtol=0, atol=0)
    assert board.records[-1].layers_seen
    temp_then_other = sample(env, other(env, modulated(env, env.model)))
    other_then_temp = sample(env, modulated(env, other(env, env.model)))
    torch.testing.assert_close(temp_then_other, other_then_temp, rtol=0, atol=0)
    assert not torch.allclose(temp_then_other, sample(env, modulated(env, env.model)), atol=1e-4)  # theirs ran
    assert not torch.allclose(temp_then_other, alone, atol=1e-4)                                   # ours ran


# ------------------------------------------------------------------------------- prompt-control's couple
def couple(model, regions: int = 1, tokens: int = 154):
    """Attention Couple as read: an attn2_patch that repeats the positive rows once per region and joins the
    regions' contexts (padded to the lcm of their lengths), recording the layout; an attn2_output_patch that sums
    each positive row group back."""
    m = model.clone()
    region = torch.randn(1, tokens, 768, generator=torch.Generator().manual_seed(5))

    def attn2_patch(n, context, value, extra_options):
        layout = list(extra_options["cond_or_uncond"])
        extra_options["cond_or_uncond_hook_couple"] = [c for c in layout for _ in range(1 + regions * (c == 0))]
        per = n.shape[0] // len(layout)
        lcm = torch.lcm(torch.tensor(context.shape[1]), torch.tensor(tokens)).item()
        rows, ctx = [], []
        for j, c in enumerate(layout):
            chunk, chunk_ctx = n[j * per:(j + 1) * per], context[j * per:(j + 1) * per]
            rows.append(chunk.repeat(1 + regions * (c == 0), 1, 1))
            ctx.append(chunk_ctx.repeat(1, lcm // chunk_ctx.shape[1], 1))
            if c == 0:
                ctx.extend([region.to(chunk_ctx).repeat(per, lcm // tokens, 1)] * regions)
        joined = torch.cat(ctx)
        return torch.cat(rows), joined, joined

    def attn2_output_patch(out, extra_options):
        layout = extra_options["cond_or_uncond_hook_couple"]
        per = out.shape[0] // len(layout)
        groups, j = [], 0
        for c in extra_options["cond_or_uncond"]:
            n = 1 + regions * (c == 0)
            groups.append(out[j * per:(j + n) * per].reshape(n, per, *out.shape[1:]).mean(0))
            j += n
        return torch.cat(groups)

    m.set_model_attn2_patch(attn2_patch)
    m.set_model_attn2_output_patch(attn2_output_patch)
    return m


def test_prompt_controls_attention_couple_is_refused_with_a_clear_message(env):
    sample(env, couple(env.model))                                        # the stand-in works on its own
    captured, _ = capture(env, couple(env.model))
    with pytest.raises(Exception, match="prompt-control's Attention Couple is active"):
        sample(env, captured)


# ------------------------------------------------------------------------------ runs, clones and boards
def test_two_samplers_on_one_guided_model_each_get_their_own_record(host, tiny_ckpt):
    g = {"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}},
         "t": {"class_type": "AttentionAlignTextSelfAttention",
               "inputs": {"clip": ["c", 1], "text": PROMPT, "encoder": "auto", "gamma": 3.0}},
         "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 1], "text": ""}},
         "g": {"class_type": "AttentionAlignTSAM", "inputs": {
             "text_attention": ["t", 0], "loss": "paper", "strength": 10.0, "scale_factor": 5.0, "guided_steps": 30,
             "refine": "off", "threshold_per_token": 0.14, "level": 32}},
         "a": {"class_type": "AttentionAlignApplyGuidance", "inputs": {"model": ["c", 0], "guidance": ["g", 0]}},
         "cap": {"class_type": "AttentionAlignCaptureCrossAttention",
                 "inputs": {"model": ["a", 0], "levels": 32, "record_steps": False}},
         "l": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}}}
    for name, seed, steps in (("s1", 1, 3), ("s2", 2, 5)):
        g[name] = {"class_type": "KSampler", "inputs": {
            "model": ["cap", 0], "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["t", 2], "negative": ["n", 0], "latent_image": ["l", 0],
            "denoise": 1.0}}
    for name in ("s1", "s2"):
        g["v" + name] = {"class_type": "AttentionAlignVisualize", "inputs": {
            "attention_maps": ["cap", 1], "guidance_log": ["a", 1], "text_attention": ["t", 0],
            "latent": [name, 0], "words": "car", "level": 32, "columns": 4}}
    out = host.run(g, fresh=True)
    logs = out["a"][1].records
    assert sorted((r.stamp.node_id, r.total_steps) for r in logs) == [("s1", 3), ("s2", 5)]
    assert sorted(len(r.steps) for r in logs) == [2, 3]                    # 30 of 50 → 2 of 3, 3 of 5
    for name in ("s1", "s2"):
        latent = out[name][0]["samples"]
        log = out["a"][1].resolve(latent=latent)
        assert log.stamp.node_id == name and maps_for(out, latent).stamp.node_id == name
        assert out["v" + name][1].splitlines() == ["car", "T", "S", "loss"]
    with pytest.raises(ValueError, match=r"sampled by 2 sampler nodes \(s1, s2\); connect the LATENT"):
        out["a"][1].resolve(input_name="guidance_log")
    with pytest.raises(ValueError, match="latent: it is not the output of any sampling run of this model"):
        out["a"][1].resolve(latent=torch.zeros_like(out["s1"][0]["samples"]))


def maps_for(out, latent):
    return out["cap"][1].resolve(latent=latent)


def test_a_layer_run_twice_by_another_pack_does_not_change_the_truncated_loss(env):
    """A foreign object patch runs one of the layers the loss reads twice in the same pass (the same input, so the
    same maps): the gradient pass counts each layer once, so its loss and its update are what they are without."""
    from conftest import guide

    T = env.host.pack_module("guidance.tsam")
    guidance = T.tsam_guidance(env.ta.target(), eos_index=env.ta.eos_index, prompt=env.ta.prompt, strength=10.0,
                               refine="off", context=env.ta.context)
    read = [layer.key for layer in env.host.pack_module("nodes.host.backend").backend_of(env.model).layers()
            if layer.level == 32]
    unet = env.model.model.diffusion_model
    name, block = next((n, m) for n, m in unet.named_modules() if type(m).__name__ == "SpatialTransformer"
                       and n.startswith(f"{read[0][0]}_blocks.{read[0][1]}."))
    original = type(block).forward.__get__(block)
    twice = env.model.clone()

    def forward_twice(x, *args, **kwargs):
        original(x, *args, **kwargs)                                        # the first call's output is dropped
        return original(x, *args, **kwargs)
    twice.add_object_patch(f"diffusion_model.{name}.forward", forward_twice)
    runs = []
    for model in (env.model, twice):
        m, log = guide(env.G, model, guidance, verify=True)
        runs.append((sample(env, m), log))
    (plain_x, plain), (twice_x, doubled) = runs
    # the same maps, so the same loss; not asserted bit for bit: the doubled layer's buffers sit at other addresses,
    # and the CPU kernels' vector remainders then round differently (measured: 1–3 ulp on a loss of 0.75); rtol 1e-6
    # is about ten ulp: the doubled run must read the very maps the plain run reads.
    for a, b in zip(plain.steps, doubled.steps, strict=True):
        torch.testing.assert_close(b.loss_before, a.loss_before, rtol=1e-6, atol=0)
    # the first update (same latent before it): the same gradient, summed in another order (the maps' path and the
    # output's path meet at the layer's input instead of inside it), so equal up to float rounding, not bit for bit;
    # later steps start from latents that already differ by that rounding
    a, b = plain.steps[0], doubled.steps[0]
    assert torch.equal(a.x_before, b.x_before) and not torch.equal(a.x_after, a.x_before)
    torch.testing.assert_close(b.x_after - b.x_before, a.x_after - a.x_before, rtol=1e-5, atol=1e-4)
    # the result: the sampler passes run the doubled layer too, and two guided steps carry the first update's rounding
    # through a 3-step trajectory; equal to a few parts in 10⁴ of the latent's scale
    torch.testing.assert_close(twice_x, plain_x, rtol=1e-3, atol=5e-3)
