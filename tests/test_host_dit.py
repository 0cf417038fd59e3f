"""Capture and visualisation on DiT models (Flux, SD3/SD3.5's MMDiT) in a real ComfyUI, on tiny random-weight models
built from ComfyUI's own classes (``scripts/tiny_dit.py``)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

PROMPT = "a red car and a blue bench"


@pytest.fixture(scope="module")
def dit(host):
    import tiny_dit

    flux_clip, sd3_clip = tiny_dit.flux_clip(), tiny_dit.sd3_clip()
    return SimpleNamespace(
        host=host, flux=tiny_dit.flux_model(), mmdit=tiny_dit.mmdit_model(), flux_clip=flux_clip, sd3_clip=sd3_clip,
        G=host.pack_module("nodes.host.guided"), text=host.node_class("AttentionAlignTextSelfAttention"),
        capture=host.node_class("AttentionAlignCaptureCrossAttention"),
        viz=host.node_class("AttentionAlignVisualize"))


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample(model, pos, neg, *, cfg, size=(12, 10), sampler="euler", steps=3, seed=4, batch=1):
    import nodes as comfy_nodes

    latent = {"samples": torch.zeros(batch, 16, *size)}
    return comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler, "simple", pos, neg, latent)[0]["samples"]


class Override:
    """A test-side ``optimized_attention_override``: one object however often ComfyUI's ``clone()`` deep-copies
    the model options, with the kernel call's arguments read as the tests need them."""

    def __deepcopy__(self, memo):
        return self

    @staticmethod
    def qkv(args, kwargs):
        """q, k, v as ``[b, heads, L, d]`` (ComfyUI passes ``[b, L, heads·d]`` without ``skip_reshape``; MMDiT's v
        as ``[b, L, heads, d]``)."""
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        if kwargs.get("skip_reshape", False):
            return args[0], args[1], args[2]
        return tuple(t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in args[:3])

    @staticmethod
    def phase(kwargs) -> float:
        """step / steps of the sampler at this call."""
        to = kwargs["transformer_options"]
        schedule = to["sample_sigmas"].tolist()
        step = max(i for i, sg in enumerate(schedule[:-1]) if sg >= float(to["sigmas"][0]))
        return step / (len(schedule) - 1)

    @staticmethod
    def output(out, dtype):
        """``[b, heads, L, d]`` → the kernel's ``[b, L, heads·d]``."""
        return out.to(dtype).transpose(1, 2).reshape(out.shape[0], -1, out.shape[1] * out.shape[3])


class KernelInputs(Override):
    """Keeps q, k (as ``[b, heads, L, d]``) and the batch's chunk order of every joint-attention call (k spanning
    ``text + image`` tokens), then runs the host's kernel."""

    def __init__(self, text: int, image: int):
        self.length, self.calls = text + image, []

    def __call__(self, func, *args, **kwargs):
        q, k, _ = self.qkv(args, kwargs)
        if k.shape[-2] == self.length:
            order = kwargs["transformer_options"]["cond_or_uncond"]
            self.calls.append((q.detach().float().clone(), k.detach().float().clone(), list(order)))
        return func(*args, **kwargs)


def by_hand(calls, text: int, grid: tuple[int, int]) -> torch.Tensor:
    """The mean over calls of the positive rows' head-averaged ``softmax(q_img · k_txtᵀ / √d)`` over text keys."""
    n = grid[0] * grid[1]
    maps = []
    for q, k, order in calls:
        per = q.shape[0] // len(order)
        rows = order.index(0)
        qi, kt = q[rows * per:(rows + 1) * per, :, text:text + n], k[rows * per:(rows + 1) * per, :, :text]
        p = (qi @ kt.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)    # [B, heads, n, T]
        maps.append(p.mean(1).transpose(1, 2).reshape(per, text, *grid))
    return torch.stack(maps).mean(0)


@pytest.mark.parametrize("kind", ["flux", "mmdit"])
def test_capture_is_exact_and_matches_the_kernels_q_and_k(dit, kind):
    """Flux at cfg 1 (guidance-distilled) and SD3 at cfg 4 (both prompts batched): the output is bit for bit the
    stock one, also with another pack's attention override installed (it still runs: chained, not dropped), and the
    maps are the softmax of the q·kᵀ the kernel received, averaged as documented."""
    model = getattr(dit, kind)
    clip = dit.flux_clip if kind == "flux" else dit.sd3_clip
    pos, neg = encode(clip, PROMPT), encode(clip, "blurry")
    cfg = 1.0 if kind == "flux" else 4.0
    text = pos[0][0].shape[1]
    stock = sample(model, pos, neg, cfg=cfg)
    observed = model.clone()
    spy = KernelInputs(text, 6 * 5)
    observed.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = spy
    captured, board = dit.G.captured_model(observed, None)
    out = sample(captured, pos, neg, cfg=cfg)
    assert torch.equal(out, stock)
    rec = board.records[-1]
    blocks = 4 if kind == "flux" else 3
    assert len(spy.calls) == 3 * blocks                                      # every joint call of 3 steps reached it
    assert rec.levels() == [16] and rec.size(16) == (6, 5) and len(rec.layers_seen) == blocks
    maps = rec.mean(16)
    assert maps.shape == (1, text, 6, 5)
    torch.testing.assert_close(maps.sum(1), torch.ones(1, 6, 5))
    torch.testing.assert_close(maps, by_hand(spy.calls, text, (6, 5)), rtol=1e-5, atol=1e-6)
    assert sorted(rec.layers_seen)[0][0] == "double"


def test_odd_latent_sizes_round_the_grid_up_and_batches_keep_their_rows(dit):
    pos, neg = encode(dit.flux_clip, PROMPT), encode(dit.flux_clip, "")
    captured, board = dit.G.captured_model(dit.flux, None)
    sample(captured, pos, neg, cfg=1.0, size=(9, 7), batch=2)
    maps = board.records[-1].mean(16)
    assert maps.shape == (2, 256, 5, 4)                                      # Flux pads 9×7 to 10×8 → 5×4 patches
    assert not torch.allclose(maps[0], maps[1])                              # each sample its own noise, own map


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun", "uni_pc"])
def test_capture_works_with_other_samplers(dit, sampler):
    pos, neg = encode(dit.sd3_clip, PROMPT), encode(dit.sd3_clip, "")
    stock = sample(dit.mmdit, pos, neg, cfg=3.0, sampler=sampler)
    captured, board = dit.G.captured_model(dit.mmdit, None)
    assert torch.equal(sample(captured, pos, neg, cfg=3.0, sampler=sampler), stock)
    assert board.records[-1].mean(16).shape == (1, 154, 6, 5)


def test_t5_text_attention_equals_an_independent_computation(dit):
    """Layer 0 of T5 by hand: ``softmax(q kᵀ + relative-position bias)`` (T5 does not scale by 1/√d), from the
    token embeddings; and ``o(P v)`` reproduces the layer's own output."""
    ta, image, cond = dit.text.execute(dit.flux_clip, PROMPT, "auto", 3.0).args
    assert ta.encoder == "t5xxl" and ta.offset == 0 and cond[0][0].shape[1] == 256
    render = dit.host.pack_module("nodes.host.render")
    title = "T = text self-attention^3 (t5xxl)"
    causal = render.matrix_tile(ta.target(), ta.prompt_labels, (512, 512), title, lower_only=True)
    assert torch.equal(image[0], render.matrix_tile(ta.target(), ta.prompt_labels, (512, 512), title,
                                                    lower_only=False))
    assert not torch.equal(image[0], causal)                                 # T5 attends both ways: drawn whole
    assert [w.label for w in ta.words] == ["a", "red", "car", "and", "a#2", "blue", "bench"]
    t5 = dit.flux_clip.cond_stage_model.t5xxl.transformer
    ids = torch.tensor([[i if i is not None else 0 for i in ta.token_ids]])
    x = t5.shared(ids, out_dtype=torch.float32)
    layer = t5.encoder.block[0].layer[0]
    attn = layer.SelfAttention
    h = layer.layer_norm(x)
    heads, d = attn.num_heads, attn.q.weight.shape[0] // attn.num_heads
    q, k, v = (f(h).view(1, -1, heads, d).transpose(1, 2) for f in (attn.q, attn.k, attn.v))
    bias = attn.compute_bias(ids.shape[1], ids.shape[1], x.device, torch.float32)
    p = (q @ k.transpose(-1, -2) + bias).softmax(-1)
    torch.testing.assert_close(ta.probs[0], p[0], rtol=1e-4, atol=1e-6)
    import comfy.ldm.modules.attention as attention
    out, _ = attn(h, optimized_attention=attention.optimized_attention_for_device(x.device))
    torch.testing.assert_close(attn.o((p @ v).transpose(1, 2).reshape(1, -1, heads * d)), out, rtol=1e-4, atol=1e-5)
    assert ta.target().shape == (9, 9)                                       # each "a" is two pieces: ▁ + a


def test_sd3_words_sit_after_the_clip_tokens(dit):
    ta, _, cond = dit.text.execute(dit.sd3_clip, PROMPT, "auto", 3.0).args
    assert (ta.encoder, ta.offset, cond[0][0].shape[1]) == ("t5xxl", 77, 154)
    assert ta.words[1].label == "red" and ta.words[1].positions == (79,)
    assert ta.prompt_slice == slice(77, 86)
    clip_ta = dit.text.execute(dit.sd3_clip, PROMPT, "clip_l", 3.0).args[0]
    assert clip_ta.offset == 0 and clip_ta.words[1].positions == (2,)       # CLIP-L starts SD3's context
    with pytest.raises(ValueError, match="Flux.*t5xxl or auto"):
        dit.text.execute(dit.flux_clip, PROMPT, "clip_l", 3.0)

def test_sd3_text_attention_knows_the_other_encoders_words(dit):
    """On SD3 the context is CLIP-L/G's 77 tokens then T5's: reading either, the text attention also carries the
    other encoder's words at their own context positions (CLIP-L's from its tokenizer, bos at 0; T5's after the
    CLIP window). Flux's context is T5 alone: no twin."""
    t5 = dit.text.execute(dit.sd3_clip, PROMPT, "auto", 3.0).args[0]
    clip = dit.text.execute(dit.sd3_clip, PROMPT, "clip_l", 3.0).args[0]
    assert t5.encoder == "t5xxl" and t5.twin.encoder == "clip_l" and clip.twin.encoder == "t5xxl"
    assert [w.label for w in t5.twin.words] == [w.label for w in clip.words] == [w.label for w in t5.words]
    assert [w.positions for w in t5.twin.words] == [w.positions for w in clip.words]      # CLIP-L's own reading
    assert [w.positions for w in clip.twin.words] == [w.positions for w in t5.words]      # T5's own reading
    assert (t5.twin.first, t5.twin.eos, t5.twin.end) == (1, clip.eos_index, 77)
    assert (clip.twin.first, clip.twin.eos, clip.twin.end) == (t5.prompt_slice.start, t5.context_eos,
                                                               t5.context_end)
    assert dit.text.execute(dit.flux_clip, PROMPT, "auto", 3.0).args[0].twin is None



@pytest.mark.parametrize("kind", ["flux", "mmdit"])
def test_visualize_draws_the_words_from_their_context_positions(dit, kind):
    model = getattr(dit, kind)
    clip = dit.flux_clip if kind == "flux" else dit.sd3_clip
    ta, _, pos = dit.text.execute(clip, PROMPT, "auto", 3.0).args
    captured, board = dit.capture.execute(model, 0, False).args
    latent = sample(captured, pos, encode(clip, ""), cfg=1.0 if kind == "flux" else 3.0)
    grid, labels = dit.viz.execute("car, bench", 0, 4, attention_maps=board, text_attention=ta,
                                   latent={"samples": latent}).args
    assert labels.splitlines() == ["car", "bench", "T", "S"]
    assert grid.shape[0] == 1 and grid.shape[-1] == 3
    maps = board.records[-1].mean(16)
    word_map = dit.host.pack_module("guidance.viz").word_maps
    car = [w for w in ta.words if w.text == "car"]
    torch.testing.assert_close(word_map(maps, car)[0, 0], maps[0, car[0].positions[0]])


def test_visualize_refuses_a_text_attention_beyond_the_recorded_context(dit):
    ta = dit.text.execute(dit.sd3_clip, PROMPT, "auto", 3.0).args[0]               # T5 at 77–85
    pos = encode(dit.flux_clip, PROMPT)
    short = [[pos[0][0][:, :60], pos[0][1]]]                                       # a 60-token context
    captured, board = dit.capture.execute(dit.flux, 0, False).args
    sample(captured, short, short, cfg=1.0)
    with pytest.raises(ValueError, match="positions 77–85, but the recorded maps have 60 tokens"):
        dit.viz.execute("", 0, 4, attention_maps=board, text_attention=ta)


def test_tsam_on_t5_compares_whole_rows_of_the_prompts_span(dit):
    """T-SAM with T5's bidirectional T on SD3: the loss equals the whole-row loss computed by hand from the captured
    maps of T5's prompt tokens (after the 77 CLIP tokens) and the text attention's T."""
    from conftest import guide

    ta, guidance = method_guidance(dit, dit.sd3_clip, "T-SAM", strength=0.0)
    m, log = guide(dit.G, dit.mmdit, guidance)
    captured, board = dit.G.captured_model(m, 16, keep_steps=True)
    sample(captured, ta_conditioning(dit, dit.sd3_clip), encode(dit.sd3_clip, ""), cfg=3.0, steps=4)
    maps = board.records[-1].steps[0].mean(16)[:, 77:77 + ta.eos_index]
    tsam = dit.host.pack_module("guidance.tsam")
    torch.testing.assert_close(log.steps[0].loss_before, tsam.tsam_loss(maps, ta.target(), "paper", causal=False),
                               rtol=1e-4, atol=1e-6)
    assert ta.eos_index == 9 and ta.target().shape == (9, 9)


def test_edits_on_dits_say_which_level_and_blocks_there_are(dit):
    ta = dit.text.execute(dit.sd3_clip, PROMPT, "auto", 3.0).args[0]
    regulation = dit.host.node_class("AttentionAlignAttentionRegulation")
    apply = dit.host.node_class("AttentionAlignApplyGuidance")
    at_32 = regulation.execute(ta, "car", "builtin", 0, 25, 20, 100.0, 32).args[0]
    with pytest.raises(ValueError, match="level: this model has no cross-attention at image ÷32; its levels are 16"):
        apply.execute(dit.mmdit, at_32)
    with pytest.raises(ValueError, match="dit_blocks: 'single' is not one of all, double"):
        regulation.execute(ta, "car", "builtin", 0, 25, 20, 100.0, 16, dit_blocks="single")
    edited, _ = apply.execute(dit.mmdit, regulation.execute(ta, "car", "builtin", 0, 25, 20, 100.0, 16).args[0]).args
    with pytest.raises(ValueError, match="positive: the positive conditioning is not the prompt text_attention"):
        sample(edited, encode(dit.sd3_clip, "a green boat"), encode(dit.sd3_clip, ""), cfg=3.0)


def test_an_unsupported_dit_is_named(dit):
    import comfy.supported_models
    import tiny_dit

    config = comfy.supported_models.PixArtAlpha({"image_model": "pixart_alpha", "input_size": 8, "patch_size": 2,
                                                 "in_channels": 4, "hidden_size": 64, "depth": 1, "num_heads": 2,
                                                 "caption_channels": 32, "model_max_length": 8})
    pixart = tiny_dit._patcher(config.get_model({}))
    with pytest.raises(ValueError, match="PixArtMS, which Attention Align does not support.*Flux.*SD3"):
        dit.capture.execute(pixart, 0, False)


class HandTemperature(Override):
    """A test-side reference for TACA: computes every joint attention by hand (float64), the image-query × text-key
    logits × γ while step / steps < ``until``."""

    def __init__(self, text: int, gamma: float, until: float):
        self.text, self.gamma, self.until, self.edited = text, gamma, until, 0

    def __call__(self, func, *args, **kwargs):
        q, k, v = self.qkv(args, kwargs)
        if k.shape[-2] <= self.text or self.phase(kwargs) >= self.until:
            return func(*args, **kwargs)
        self.edited += 1
        s = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
        s[:, :, self.text:, :self.text] *= self.gamma
        return self.output(s.softmax(-1) @ v.double(), q.dtype)


def temperature(dit, gamma, until):
    return dit.host.node_class("AttentionAlignJointTemperature").execute(gamma, until).args[0]


@pytest.mark.parametrize("kind", ["flux", "mmdit"])
def test_joint_temperature_equals_the_hand_computed_attention(dit, kind):
    """γ on the image→text logits inside the joint softmax at steps 0 and 1 of 4 (phase < 0.3), both CFG branches,
    every block; the sampled latent matches a by-hand attention (the only difference: kernel vs float64)."""
    model = getattr(dit, kind)
    clip = dit.flux_clip if kind == "flux" else dit.sd3_clip
    pos, neg = encode(clip, PROMPT), encode(clip, "blurry")
    cfg = 1.0 if kind == "flux" else 4.0
    apply = dit.host.node_class("AttentionAlignApplyGuidance")
    edited, _ = apply.execute(model, temperature(dit, 1.5, 0.3)).args
    out = sample(edited, pos, neg, cfg=cfg, steps=4)
    reference = model.clone()
    hand = HandTemperature(pos[0][0].shape[1], 1.5, 0.3)
    reference.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = hand
    expected = sample(reference, pos, neg, cfg=cfg, steps=4)
    stock = sample(model, pos, neg, cfg=cfg, steps=4)
    assert hand.edited == 2 * (4 if kind == "flux" else 3)                  # 2 steps × every block
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert (out - stock).abs().max() > 100 * (out - expected).abs().max()    # the edit is far above that tolerance


def test_joint_temperature_off_is_the_stock_model_bit_for_bit(dit):
    pos, neg = encode(dit.sd3_clip, PROMPT), encode(dit.sd3_clip, "")
    stock = sample(dit.mmdit, pos, neg, cfg=3.0)
    apply = dit.host.node_class("AttentionAlignApplyGuidance")
    for gamma, until in ((1.0, 1.0), (1.2, 0.0)):
        edited, _ = apply.execute(dit.mmdit, temperature(dit, gamma, until)).args
        assert torch.equal(sample(edited, pos, neg, cfg=3.0), stock), (gamma, until)


def test_joint_temperature_through_the_guided_ksampler_with_capture(dit):
    """The Guided KSampler takes the edit too; its maps (image ÷16) are the edited attention's, so they differ
    from a stock run's while every pixel still sums to 1 over the tokens."""
    ta, _, pos = dit.text.execute(dit.flux_clip, PROMPT, "auto", 3.0).args
    neg = encode(dit.flux_clip, "")
    latent = {"samples": torch.zeros(1, 16, 12, 10)}
    ks = dit.host.node_class("AttentionAlignGuidedKSampler")
    _, maps, log = ks.execute(dit.flux, 4, 3, 1.0, "euler", "simple", pos, neg, latent, 1.0,
                              temperature(dit, 2.0, 1.0)).args
    _, plain, _ = ks.execute(dit.flux, 4, 3, 1.0, "euler", "simple", pos, neg, latent, 1.0,
                             temperature(dit, 1.0, 1.0)).args
    assert maps.levels() == [16] and log.method == "Joint Attention Temperature"
    torch.testing.assert_close(maps.mean(16).sum(1), torch.ones(1, 6, 5))
    assert not torch.allclose(maps.mean(16), plain.mean(16))


def test_joint_temperature_refuses_a_unet(dit, loaded):
    model = loaded[0]
    with pytest.raises(ValueError, match="Joint Attention Temperature edits the joint attention of DiT models"):
        dit.host.node_class("AttentionAlignApplyGuidance").execute(model, temperature(dit, 1.2, 0.1))


# -- gradient methods (Attend-and-Excite, SynGen) on DiTs: latent updates in the flow-matching parameterisation ----
def method_guidance(dit, clip, name, fast=False, **kw):
    ta = dit.text.execute(clip, PROMPT, "auto", 3.0).args[0]
    if name == "T-SAM":
        args = (ta, kw.get("loss", "paper"), kw.get("strength", 1.0), kw.get("scale", 5.0), kw.get("guided", 30),
                "off", 0.14, 16)
        return ta, dit.host.node_class("AttentionAlignTSAM").execute(*args, fast=fast).args[0]
    if name == "A&E":
        args = (ta, "car, bench", "builtin", kw.get("softmax", "official"), kw.get("strength", 1.0), kw.get("scale", 20.0),
                kw.get("guided", 25), kw.get("refine", 0), 16)
        return ta, dit.host.node_class("AttentionAlignAttendExcite").execute(*args, fast=fast).args[0]
    args = (ta, "red car; blue bench", "builtin", kw.get("strength", 1.0), kw.get("scale", 20.0), kw.get("guided", 25),
            16)
    return ta, dit.host.node_class("AttentionAlignSynGen").execute(*args, fast=fast).args[0]


@pytest.mark.parametrize("kind,name", [("flux", "A&E"), ("flux", "SynGen"), ("flux", "T-SAM"), ("mmdit", "A&E"),
                                       ("mmdit", "SynGen"), ("mmdit", "T-SAM")])
def test_gradient_methods_lower_their_loss_at_each_guided_step(dit, kind, name):
    """The loss at the updated latent (same σ) is below the loss before the update, at every guided step; on SD3
    with CFG, through its activation-checkpointed joint blocks, and reading T5's words after the CLIP tokens."""
    from conftest import guide

    model = getattr(dit, kind)
    clip = dit.flux_clip if kind == "flux" else dit.sd3_clip
    ta, guidance = method_guidance(dit, clip, name)
    m, log = guide(dit.G, model, guidance, verify=True)
    neg = encode(clip, "")
    sample(m, ta_conditioning(dit, clip), neg, cfg=1.0 if kind == "flux" else 3.0, steps=4, batch=2)
    assert [r.step for r in log.steps] == [0, 1]                   # 25 (T-SAM: 30) of 50 → 2 of 4 steps, rounded
    for rec in log.steps:
        assert torch.all(rec.loss_after < rec.loss_final), (rec.step, rec.loss_final, rec.loss_after)


def ta_conditioning(dit, clip):
    return dit.text.execute(clip, PROMPT, "auto", 3.0).args[2]


@pytest.mark.parametrize("softmax", ["official", "auto"])
def test_attend_and_excite_reads_t5s_span_of_the_context(dit, softmax):
    """The loss by hand from the captured maps: softmax(100·A) over T5's tokens after its 77 CLIP tokens on SD3 —
    ``official``: up to the last one, as the official −1, padding included; ``auto`` on T5: the prompt's tokens only
    (T5's first token to its ``</s>``, as gsn-factory's drop_eot) — smoothed, 1 − the weaker subject's peak."""
    from conftest import guide

    ta, guidance = method_guidance(dit, dit.sd3_clip, "A&E", strength=0.0, softmax=softmax)
    assert guidance.objective.normalize_eot == (softmax == "auto")
    m, log = guide(dit.G, dit.mmdit, guidance)
    captured, board = dit.G.captured_model(m, 16, keep_steps=True)
    sample(captured, ta_conditioning(dit, dit.sd3_clip), encode(dit.sd3_clip, ""), cfg=3.0, steps=4)
    smooth = dit.host.pack_module("guidance.smoothing").smooth_maps
    maps = board.records[-1].steps[0].mean(16)                               # the sampler's evaluation at step 0
    a = torch.softmax(100 * maps[:, 77:153 if softmax == "official" else 77 + ta.eos_index], dim=1)
    car, bench = (next(w for w in ta.words if w.text == t).positions[0] - 77 for t in ("car", "bench"))
    peaks = smooth(a[:, [car, bench]]).flatten(-2).max(-1).values
    torch.testing.assert_close(log.steps[0].loss_before, (1 - peaks).clamp_min(0).max(-1).values, rtol=1e-4,
                               atol=1e-5)


def test_both_encoders_on_sd3_average_the_loss_on_clips_and_t5s_tokens(dit):
    """encoders = both on SD3: the loss is the mean of the loss on T5's tokens of the words and on CLIP-L's tokens of
    the same words, each computed by hand from the captured maps with its own encoder's softmax (auto: T5 without its
    padding, CLIP-L with it, as the official SD1 code) — for A&E; SynGen the same with its own loss. On Flux, whose
    context is T5 alone, both is refused."""
    from conftest import guide

    smooth = dit.host.pack_module("guidance.smoothing").smooth_maps
    syngen_loss = dit.host.pack_module("guidance.syngen").syngen_loss
    ta = dit.text.execute(dit.sd3_clip, PROMPT, "auto", 3.0).args[0]
    ae = dit.host.node_class("AttentionAlignAttendExcite").execute(
        ta, "car, bench", "builtin", "auto", 0.0, 20.0, 25, 0, 16, encoders="both").args
    sg = dit.host.node_class("AttentionAlignSynGen").execute(
        ta, "red car; blue bench", "builtin", 0.0, 20.0, 25, 16, encoders="both").args
    assert "and on clip_l's tokens, loss averaged: car[3], bench[7]" in ae[1]
    logs = []
    for guidance in (ae[0], sg[0]):
        m, log = guide(dit.G, dit.mmdit, guidance)
        captured, board = dit.G.captured_model(m, 16, keep_steps=True)
        sample(captured, ta_conditioning(dit, dit.sd3_clip), encode(dit.sd3_clip, ""), cfg=3.0, steps=4)
        logs.append((log, board.records[-1].steps[0].mean(16)))
    (ae_log, maps), (sg_log, sg_maps) = logs

    def ae_loss(span: slice, positions):
        a = torch.softmax(100 * maps[:, span], dim=1)
        peaks = smooth(a[:, [p - span.start for p in positions]]).flatten(-2).max(-1).values
        return (1 - peaks).clamp_min(0).max(-1).values

    t5 = {w.text: w.positions[0] for w in ta.words}
    clip = {w.text: w.positions[0] for w in ta.twin.words}
    by_hand = (ae_loss(slice(77, 77 + ta.eos_index), [t5["car"], t5["bench"]]) +
               ae_loss(slice(1, 76), [clip["car"], clip["bench"]])) / 2
    torch.testing.assert_close(ae_log.steps[0].loss_before, by_hand, rtol=1e-4, atol=1e-5)
    t5_groups = [[(t5["red"],), (t5["car"],)], [(t5["blue"],), (t5["bench"],)]]
    clip_groups = [[(clip["red"],), (clip["car"],)], [(clip["blue"],), (clip["bench"],)]]
    by_hand = (syngen_loss(sg_maps, t5_groups, list(range(77, 77 + ta.eos_index))) +
               syngen_loss(sg_maps, clip_groups, list(range(1, ta.twin.eos)))) / 2
    torch.testing.assert_close(sg_log.steps[0].loss_before, by_hand, rtol=1e-4, atol=1e-5)
    flux_ta = dit.text.execute(dit.flux_clip, PROMPT, "auto", 3.0).args[0]
    with pytest.raises(ValueError, match="encoders: 'both' needs a context made of two text encoders' tokens"):
        dit.host.node_class("AttentionAlignAttendExcite").execute(
            flux_ta, "car, bench", "builtin", "auto", 1.0, 20.0, 25, 0, 16, encoders="both")


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun", "euler_ancestral", "uni_pc"])
def test_dit_update_persists_and_strength_zero_is_stock(dit, sampler):
    """As on UNets: with guidance at step 0 only, the result is the stock sampler restarted from the updated latent
    (a sampler with no exact in-place option: its step-0-alone solver first); strength 0 is the stock result bit for
    bit."""
    from conftest import guide
    from test_host_engine import restarted

    pos, neg = ta_conditioning(dit, dit.flux_clip), encode(dit.flux_clip, "")
    paths = dit.host.pack_module("nodes.host.samplers")
    exact = sampler in paths.IN_PLACE or sampler in paths.CHUNKED_EXACT
    stock = sample(dit.flux, pos, neg, cfg=1.0, sampler=sampler)
    assert not stock.requires_grad
    zero, _ = guide(dit.G, dit.flux, method_guidance(dit, dit.flux_clip, "SynGen", strength=0.0)[1])
    if exact:                  # the others run their guided steps one at a time (README, Samplers), as on UNets
        assert torch.equal(sample(zero, pos, neg, cfg=1.0, sampler=sampler), stock)
    m, log = guide(dit.G, dit.flux, method_guidance(dit, dit.flux_clip, "SynGen", strength=50.0, guided=10)[1],
                   verify=True)
    guided = sample(m, pos, neg, cfg=1.0, sampler=sampler)
    assert [r.step for r in log.steps] == [0]
    assert (guided - stock).abs().max() > 1e-3
    ref = sample(restarted(dit.flux, log.steps[0].x_after, chunk_first=not exact), pos, neg, cfg=1.0,
                 sampler=sampler)
    assert torch.equal(guided, ref)


@pytest.mark.parametrize("kind", ["flux", "mmdit"])
def test_fast_mode_on_dits_takes_the_exact_first_step(dit, kind):
    """Fast mode reads loss and gradient from the sampler's own evaluation (through Flux's in-place residuals and
    SD3's checkpointed blocks): at step 0 it evaluates the positive prompt at the same latent as exact mode, so the
    same loss and the same update."""
    from conftest import guide

    clip = dit.flux_clip if kind == "flux" else dit.sd3_clip
    model, pos, neg = getattr(dit, kind), ta_conditioning(dit, clip), encode(clip, "")
    cfg = 1.0 if kind == "flux" else 3.0
    m_exact, exact = guide(dit.G, model, method_guidance(dit, clip, "A&E")[1])
    sample(m_exact, pos, neg, cfg=cfg, steps=4, batch=2)
    m_fast, quick = guide(dit.G, model, method_guidance(dit, clip, "A&E", fast=True)[1])
    sample(m_fast, pos, neg, cfg=cfg, steps=4, batch=2)
    assert len(quick.steps) == len(exact.steps) == 2
    torch.testing.assert_close(exact.steps[0].loss_before, quick.steps[0].loss_before, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(exact.steps[0].update_ratio, quick.steps[0].update_ratio, rtol=1e-5, atol=0)


def test_attention_report_reads_t5s_span_on_sd3(dit):
    """The report's numbers on an SD3 run with a T5 prompt, by hand from the recorded maps: the weakest subject's
    peak of softmax(100·A) over T5's span (77 … 152) and the whole-row T–S distance over T5's prompt tokens."""
    import json

    ta, _, pos = dit.text.execute(dit.sd3_clip, PROMPT, "auto", 3.0).args
    captured, board = dit.capture.execute(dit.mmdit, 16, False).args
    latent = sample(captured, pos, encode(dit.sd3_clip, ""), cfg=3.0, steps=3)
    report = dit.host.node_class("AttentionAlignReport").execute(ta, "car, bench", "red car; blue bench", "builtin",
                                                                 16, attention_maps=board,
                                                                 latent={"samples": latent}).args[0]
    numbers = json.loads(report)
    maps = board.records[-1].mean(16)
    smooth = dit.host.pack_module("guidance.smoothing").smooth_maps
    a = torch.softmax(100 * maps[:, 77:153], dim=1)
    car, bench = (next(w for w in ta.words if w.text == t).positions[0] - 77 for t in ("car", "bench"))
    weakest = smooth(a[:, [car, bench]]).flatten(-2).max(-1).values.min(-1).values
    assert numbers["weakest_subject_attention"] == pytest.approx(weakest.tolist(), rel=1e-4)
    tsam = dit.host.pack_module("guidance.tsam")
    distance = tsam.tsam_loss_paper(maps[:, 77:77 + ta.eos_index], ta.target(), causal=False)
    assert numbers["ts_distance"] == pytest.approx(distance.tolist(), rel=1e-4)


def test_double_blocks_only_reads_fluxs_double_stream_and_stops_there(dit):
    """dit_blocks = double on Flux: the gradient pass reads blocks double 0 and 1 only and stops there, before the
    single blocks (the kernel then runs for double 0 alone: it stops as soon as block double 1's maps exist; with
    every block read it runs for 3 of the 4). At strength 0 the pass sees what the sampler's step-0 evaluation sees,
    so its A&E loss equals the one by hand from that evaluation's double-block q·kᵀ."""
    from conftest import guide

    ta = dit.text.execute(dit.flux_clip, PROMPT, "auto", 3.0).args[0]
    node = dit.host.node_class("AttentionAlignAttendExcite")
    pos, neg = ta_conditioning(dit, dit.flux_clip), encode(dit.flux_clip, "")
    calls, logs = {}, {}
    for blocks in ("all", "double"):
        guidance = node.execute(ta, "car, bench", "builtin", "official", 0.0, 20.0, 25, 0, 16,
                                dit_blocks=blocks).args[0]
        spied = dit.flux.clone()
        spy = KernelInputs(pos[0][0].shape[1], 6 * 5)
        spied.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = spy
        m, logs[blocks] = guide(dit.G, spied, guidance)
        sample(m, pos, neg, cfg=1.0, steps=4)
        calls[blocks] = spy.calls
    assert len(calls["all"]) == 4 * 4 + 2 * 3 and len(calls["double"]) == 4 * 4 + 2 * 1   # 4 steps, 2 guided
    maps = by_hand(calls["double"][1:3], pos[0][0].shape[1], (6, 5))        # step 0's evaluation, double 0 and 1
    smooth = dit.host.pack_module("guidance.smoothing").smooth_maps
    a = torch.softmax(100 * maps[:, :ta.context_end - 1], dim=1)
    car, bench = (next(w for w in ta.words if w.text == t).positions[0] for t in ("car", "bench"))
    peaks = smooth(a[:, [car, bench]]).flatten(-2).max(-1).values
    torch.testing.assert_close(logs["double"].steps[0].loss_before, (1 - peaks).clamp_min(0).max(-1).values,
                               rtol=1e-4, atol=1e-5)
    assert not torch.equal(logs["double"].steps[0].loss_before, logs["all"].steps[0].loss_before)
    with pytest.raises(ValueError, match="dit_blocks: 'single' is not one of all, double"):
        node.execute(ta, "car", "builtin", "official", 1.0, 20.0, 25, 0, 16, dit_blocks="single")


# ---------------------------------------------------------------------------------- Attention Modulation on DiTs
class HandModulation(Override):
    """A test-side reference for Attention Modulation on joint attention: every joint call computed by hand
    (float64). Phase p = step/steps. All rows: image × image logits / τ while p < temperature_until. Positive rows'
    image × text logits: while p < mask_until each image token keeps only the entity group whose tokens hold the
    largest softmax mass among the text tokens (−∞ on the others' tokens); then + log w on the nouns (p < switch) or
    on the attributes (p ≥ switch)."""

    def __init__(self, text, image, groups, nouns, attributes, s):
        self.text, self.image, self.groups, self.nouns, self.attributes, self.s = text, image, groups, nouns, \
            attributes, s
        self.edited = 0

    def __call__(self, func, *args, **kwargs):
        q, k, v = self.qkv(args, kwargs)
        t, n = self.text, self.image
        if k.shape[-2] < t + n:
            return func(*args, **kwargs)
        to = kwargs["transformer_options"]
        p = self.phase(kwargs)
        s = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
        it = s[:, :, t:t + n, :t].clone()                                   # image queries × text keys
        edit = torch.zeros_like(it)
        if p < self.s["mask_until"]:
            mass = it.softmax(-1)
            owner = torch.stack([mass[..., g].sum(-1) for g in self.groups], -1).argmax(-1)   # [b, heads, n]
            for gi, g in enumerate(self.groups):
                for other in self.groups:
                    if other is not g:
                        edit[..., other] = torch.where((owner == gi)[..., None], -torch.inf, edit[..., other])
        columns, w = (self.nouns, self.s["noun"]) if p < self.s["switch"] else (self.attributes, self.s["attr"])
        edit[..., columns] += math.log(w)
        order = to["cond_or_uncond"]
        per = s.shape[0] // len(order)
        for j, c in enumerate(order):
            if c == 0:
                s[j * per:(j + 1) * per, :, t:t + n, :t] += edit[j * per:(j + 1) * per]
        if p < self.s["until"]:
            s[:, :, t:t + n, t:t + n] /= self.s["tau"]
        self.edited += 1
        return self.output(s.softmax(-1) @ v.double(), q.dtype)


def modulation(dit, clip, **s):
    ta, _, pos = dit.text.execute(clip, PROMPT, "auto", 3.0).args
    node = dit.host.node_class("AttentionAlignAttentionModulation")
    guidance = node.execute(ta, "red car; blue bench", "builtin", s["tau"], s["until"], s["mask_until"], s["noun"],
                            s["attr"], s["switch"]).args[0]
    return ta, pos, guidance


@pytest.mark.parametrize("kind", ["flux", "mmdit"])
def test_attention_modulation_on_joint_attention_equals_the_hand_computed_one(dit, kind):
    """Every component in its phase over 4 steps (τ at steps 0–1, masking at 0–2, nouns at 0–1, attributes at 2–3),
    both CFG branches on SD3 (only τ on the negative one); the latent matches the hand-made attention."""
    model = getattr(dit, kind)
    clip = dit.flux_clip if kind == "flux" else dit.sd3_clip
    s = dict(tau=0.7, until=0.3, mask_until=0.6, noun=1.8, attr=1.6, switch=0.5)
    ta, pos, guidance = modulation(dit, clip, **s)
    neg = encode(clip, "blurry")
    cfg = 1.0 if kind == "flux" else 4.0
    edited, _ = dit.host.node_class("AttentionAlignApplyGuidance").execute(model, guidance).args
    out = sample(edited, pos, neg, cfg=cfg, steps=4)
    editor = guidance.edit
    at = {w.text: list(w.positions) for w in ta.words}
    assert editor.groups == [at["red"] + at["car"], at["blue"] + at["bench"]]
    assert editor.nouns == at["car"] + at["bench"] and editor.attributes == at["red"] + at["blue"]
    hand = HandModulation(pos[0][0].shape[1], 30, editor.groups, editor.nouns, editor.attributes, s)
    reference = model.clone()
    reference.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = hand
    expected = sample(reference, pos, neg, cfg=cfg, steps=4)
    stock = sample(model, pos, neg, cfg=cfg, steps=4)
    assert hand.edited == 4 * (4 if kind == "flux" else 3)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert (out - stock).abs().max() > 100 * (out - expected).abs().max()


def test_attention_modulation_neutral_on_a_dit_is_the_stock_model_bit_for_bit(dit):
    ta, pos, guidance = modulation(dit, dit.flux_clip, tau=1.0, until=0.3, mask_until=0.0, noun=1.0, attr=1.0,
                                   switch=0.5)
    edited, _ = dit.host.node_class("AttentionAlignApplyGuidance").execute(dit.flux, guidance).args
    neg = encode(dit.flux_clip, "")
    assert torch.equal(sample(edited, pos, neg, cfg=1.0), sample(dit.flux, pos, neg, cfg=1.0))


# ---------------------------------------------------------------------------------- Attention Regulation on DiTs
def regulation(dit, clip, edit_steps, dit_blocks="all"):
    ta, _, pos = dit.text.execute(clip, PROMPT, "auto", 3.0).args
    node = dit.host.node_class("AttentionAlignAttentionRegulation")
    return ta, pos, node.execute(ta, "car, bench", "builtin", 0, edit_steps, 20, 100.0, 16,
                                 dit_blocks=dit_blocks).args[0]


@pytest.mark.parametrize("kind", ["flux", "mmdit"])
def test_attention_regulation_on_joint_attention_raises_the_targets_attention(dit, kind):
    """Through the Guided KSampler: the edited steps lower the regulation loss in every block call, the maps
    (the edited attention) give the two targets more of each pixel's attention than a stock run's, and edit_steps
    0 is the stock model bit for bit. The end token gets its probability back (T5's ``</s>``; on SD3 also CLIP's
    start token, which begins the context)."""
    model = getattr(dit, kind)
    clip = dit.flux_clip if kind == "flux" else dit.sd3_clip
    cfg = 1.0 if kind == "flux" else 3.0
    ta, pos, guidance = regulation(dit, clip, 50)
    neg = encode(clip, "")
    latent = {"samples": torch.zeros(1, 16, 12, 10)}
    ks = dit.host.node_class("AttentionAlignGuidedKSampler")
    _, maps, log = ks.execute(model, 4, 3, cfg, "euler", "simple", pos, neg, latent, 1.0, guidance).args
    ta0, pos0, off = regulation(dit, clip, 0)
    stock_latent, plain, _ = ks.execute(model, 4, 3, cfg, "euler", "simple", pos0, neg, latent, 1.0, off).args
    editor = guidance.edit
    assert editor.eos_index == ta.context_eos and editor.start_token == (kind == "mmdit")
    targets = [p for w in ta.words if w.text in ("car", "bench") for p in w.positions]
    share = lambda m: m.mean(16)[:, targets].sum(1).mean().item()            # noqa: E731
    assert share(maps) > 1.5 * share(plain)
    assert [s.step for s in log.steps] == [0, 1, 2]
    assert all(s.losses[1][0] < s.losses[0][0] for s in log.steps)          # (loss before, best loss) per step
    assert torch.equal(stock_latent["samples"], sample(model, pos0, neg, cfg=cfg, steps=3))


def test_attention_regulation_double_blocks_edits_fluxs_double_stream_only(dit):
    ta, pos, guidance = regulation(dit, dit.flux_clip, 50, dit_blocks="double")
    m, _ = dit.host.node_class("AttentionAlignApplyGuidance").execute(dit.flux, guidance).args
    runs = []
    original = guidance.edit.for_run

    def spy(layers):
        runs.append(sorted(layers))
        return original(layers)

    object.__setattr__(guidance.edit, "for_run", spy)
    try:
        sample(m, pos, encode(dit.flux_clip, ""), cfg=1.0, steps=2)
    finally:
        object.__delattr__(guidance.edit, "for_run")
    assert runs == [[("double", i, 0) for i in range(len(dit.flux.model.diffusion_model.double_blocks))]]


# ---------------------------------------------------------------------------------- Flux Kontext, other packs' blocks
def with_reference(cond, latent):
    """The conditioning as ComfyUI's ReferenceLatent node makes it (Flux Kontext's reference image)."""
    return [[c[0], {**c[1], "reference_latents": [latent]}] for c in cond]


def test_flux_kontext_reference_tokens_are_neither_read_nor_edited(dit):
    """A reference latent (Flux Kontext) adds image tokens after the grid: the capture stays exact and its maps are
    those of the grid's queries over the text keys; Modulation's edit equals the hand-made one that leaves the
    reference tokens' rows alone and divides only grid × grid logits by τ (reference keys stay in the softmax)."""
    ta, pos, guidance = modulation(dit, dit.flux_clip, tau=0.7, until=0.3, mask_until=0.6, noun=1.8, attr=1.6,
                                   switch=0.5)
    pos = with_reference(pos, torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(2)))
    neg = encode(dit.flux_clip, "")
    text = pos[0][0].shape[1]
    stock = sample(dit.flux, pos, neg, cfg=1.0, steps=4)
    observed = dit.flux.clone()
    spy = KernelInputs(text, 6 * 5 + 4 * 3)                                 # the grid, then 4×3 reference patches
    observed.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = spy
    captured, board = dit.G.captured_model(observed, None)
    assert torch.equal(sample(captured, pos, neg, cfg=1.0, steps=4), stock)
    assert len(spy.calls) == 4 * 4
    torch.testing.assert_close(board.records[-1].mean(16), by_hand(spy.calls, text, (6, 5)), rtol=1e-5, atol=1e-6)
    edited, _ = dit.host.node_class("AttentionAlignApplyGuidance").execute(dit.flux, guidance).args
    out = sample(edited, pos, neg, cfg=1.0, steps=4)
    editor = guidance.edit
    hand = HandModulation(text, 30, editor.groups, editor.nouns, editor.attributes,
                          dict(tau=0.7, until=0.3, mask_until=0.6, noun=1.8, attr=1.6, switch=0.5))
    reference = dit.flux.clone()
    reference.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = hand
    torch.testing.assert_close(out, sample(reference, pos, neg, cfg=1.0, steps=4), rtol=1e-4, atol=1e-4)


class OtherPacksBlock:
    """Another pack's block replace on one DiT block: counts its calls and scales the block's image output."""

    def __init__(self):
        self.calls = 0

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        self.calls += 1
        out = extra["original_block"](args)
        return {**out, "img": out["img"] * 1.01}


@pytest.mark.parametrize("edit", [False, True], ids=["capture", "modulation"])
def test_another_packs_block_replace_keeps_running_under_capture_and_edits(dit, edit):
    """The pack takes over a block another pack replaced (Flux double block 0): that replace still runs on every
    call, capture adds nothing to its result, and an edit still reaches the block's attention through it."""
    other = OtherPacksBlock()
    model = dit.flux.clone()
    model.set_model_patch_replace(other, "dit", "double_block", 0)
    ta, pos, guidance = modulation(dit, dit.flux_clip, tau=0.7, until=1.0, mask_until=1.0, noun=1.8, attr=1.8,
                                   switch=0.5)
    neg = encode(dit.flux_clip, "")
    base = sample(model, pos, neg, cfg=1.0)
    calls = other.calls
    if edit:
        m, _ = dit.host.node_class("AttentionAlignApplyGuidance").execute(model, guidance).args
        out = sample(m, pos, neg, cfg=1.0)
        editor = guidance.edit
        hand = HandModulation(pos[0][0].shape[1], 30, editor.groups, editor.nouns, editor.attributes,
                              dict(tau=0.7, until=1.0, mask_until=1.0, noun=1.8, attr=1.8, switch=0.5))
        reference = model.clone()                                               # the other pack's replace + by hand
        reference.model_options["transformer_options"]["optimized_attention_override"] = hand
        torch.testing.assert_close(out, sample(reference, pos, neg, cfg=1.0), rtol=1e-4, atol=1e-4)
        assert hand.edited == 3 * 4 and (out - base).abs().max() > 1e-2        # every block of 3 steps, block 0 too
    else:
        m, board = dit.G.captured_model(model, None)
        assert torch.equal(sample(m, pos, neg, cfg=1.0), base)
        assert ("double", 0, 0) in board.records[-1].layers_seen
    assert other.calls - calls == calls + (calls if edit else 0)              # once per step and run, as without us


def test_a_gradient_method_after_modulation_reads_the_modulated_attention(dit):
    """Apply Guidance (Modulation) then A&E at strength 0 on Flux: A&E's loss at step 0 (the same x_T) moves with the
    modulation, since its gradient pass sees the attention that is sampled; neutral modulation leaves it as is."""
    from conftest import guide

    neg = encode(dit.flux_clip, "")
    _, aae = method_guidance(dit, dit.flux_clip, "A&E", strength=0.0)
    apply = dit.host.node_class("AttentionAlignApplyGuidance")
    losses = []
    for s in (dict(tau=1.0, until=0.3, mask_until=0.0, noun=1.0, attr=1.0, switch=0.5),
              dict(tau=0.7, until=0.3, mask_until=0.6, noun=3.0, attr=1.6, switch=0.5)):
        _, pos, modulated = modulation(dit, dit.flux_clip, **s)
        edited, _ = apply.execute(dit.flux, modulated).args
        m, log = guide(dit.G, edited, aae)
        sample(m, pos, neg, cfg=1.0, steps=3)
        losses.append(log.steps[0].loss_before)
    m, log = guide(dit.G, dit.flux, aae)
    sample(m, pos, neg, cfg=1.0, steps=3)
    assert torch.equal(losses[0], log.steps[0].loss_before)
    assert (losses[1] - losses[0]).abs().max() > 1e-3, losses


def test_attention_modulation_through_the_guided_ksampler_returns_the_dits_maps(dit):
    """Modulation edits every level, so the Guided KSampler picks the maps' level itself: 16, a DiT's only one; the
    maps are the modulated attention's (unlike a stock run's) and sum to 1 over the tokens."""
    s = dict(tau=0.7, until=0.3, mask_until=0.6, noun=1.8, attr=1.6, switch=0.5)
    _, pos, guidance = modulation(dit, dit.flux_clip, **s)
    _, _, neutral = modulation(dit, dit.flux_clip, **{**s, "tau": 1.0, "mask_until": 0.0, "noun": 1.0, "attr": 1.0})
    neg = encode(dit.flux_clip, "")
    latent = {"samples": torch.zeros(1, 16, 12, 10)}
    ks = dit.host.node_class("AttentionAlignGuidedKSampler")
    _, maps, log = ks.execute(dit.flux, 4, 3, 1.0, "euler", "simple", pos, neg, latent, 1.0, guidance).args
    _, plain, _ = ks.execute(dit.flux, 4, 3, 1.0, "euler", "simple", pos, neg, latent, 1.0, neutral).args
    assert maps.levels() == [16] and log.method == "Attention Modulation"
    torch.testing.assert_close(maps.mean(16).sum(1), torch.ones(1, 6, 5))
    assert not torch.allclose(maps.mean(16), plain.mean(16))
