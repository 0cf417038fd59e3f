"""Capture and visualisation on DiT models (Flux, SD3/SD3.5's MMDiT) in a real ComfyUI, on tiny random-weight models
built from ComfyUI's own classes (``scripts/tiny_dit.py``)."""
from __future__ import annotations

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
        G=host.pack_module("nodes._guided"), text=host.node_class("AttentionAlignTextSelfAttention"),
        capture=host.node_class("AttentionAlignCaptureCrossAttention"),
        viz=host.node_class("AttentionAlignVisualize"))


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample(model, pos, neg, *, cfg, size=(12, 10), sampler="euler", steps=3, seed=4, batch=1):
    import nodes as comfy_nodes

    latent = {"samples": torch.zeros(batch, 16, *size)}
    return comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler, "simple", pos, neg, latent)[0]["samples"]


class KernelInputs:
    """A test-side ``optimized_attention_override`` that keeps q, k (as ``[b, heads, L, d]``) and the batch's
    chunk order of every joint-attention call (k spanning ``text + image`` tokens), then runs the host's kernel."""

    def __init__(self, text: int, image: int):
        self.length, self.calls = text + image, []

    def __deepcopy__(self, memo):                 # ModelPatcher.clone() deep-copies model_options; keep one spy
        return self

    def __call__(self, func, *args, **kwargs):
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        if not kwargs.get("skip_reshape", False):
            b, n, inner = q.shape
            q, k = (t.view(b, n, heads, inner // heads).transpose(1, 2) for t in (q, k))
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
    ta, _, cond = dit.text.execute(dit.flux_clip, PROMPT, "auto", 3.0).args
    assert ta.encoder == "t5xxl" and ta.offset == 0 and cond[0][0].shape[1] == 256
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


def test_methods_say_what_dit_support_there_is(dit):
    ta = dit.text.execute(dit.flux_clip, PROMPT, "auto", 3.0).args[0]
    with pytest.raises(ValueError, match="T5 .*Attend-and-Excite works with CLIP prompts"):
        dit.host.node_class("AttentionAlignAttendExcite").execute(ta, "car", "builtin", "official", 1.0, 20.0, 25, 20,
                                                                  16)
    clip_ta = dit.text.execute(dit.sd3_clip, PROMPT, "clip_l", 3.0).args[0]
    guidance = dit.host.node_class("AttentionAlignAttendExcite").execute(
        clip_ta, "car", "builtin", "official", 1.0, 20.0, 25, 20, 32).args[0]
    with pytest.raises(ValueError, match="OpenAISignatureMMDITWrapper.*Capture Cross-Attention and Visualize"):
        dit.host.node_class("AttentionAlignApplyGuidance").execute(dit.mmdit, guidance)
    with pytest.raises(ValueError, match="network is Flux, which has no UNet cross-attention"):
        dit.host.node_class("AttentionAlignApplyGuidance").execute(dit.flux, guidance)


def test_an_unsupported_dit_is_named(dit):
    import comfy.supported_models
    import tiny_dit

    config = comfy.supported_models.PixArtAlpha({"image_model": "pixart_alpha", "input_size": 8, "patch_size": 2,
                                                 "in_channels": 4, "hidden_size": 64, "depth": 1, "num_heads": 2,
                                                 "caption_channels": 32, "model_max_length": 8})
    pixart = tiny_dit._patcher(config.get_model({}))
    with pytest.raises(ValueError, match="PixArtMS, which Attention Align does not support.*Flux.*SD3"):
        dit.capture.execute(pixart, 0, False)
