"""The UNet router (the attn2 replace): metadata parsing, observers, identity of the output, wrapping, grad passes."""
import copy
import math

import pytest
import torch
from attention_align.guidance.attention import attention_probs, positive_rows, probs_times_v
from attention_align.nodes.host.context import PASS_KEY
from attention_align.nodes.host.routers import CrossAttentionReplace, layer_call

HEADS = 2


def options(b=2, hw=(4, 4), latent=(8, 8), cou=(1, 0), block=("input", 4), depth=0, **extra):
    return {"block": block, "block_index": depth, "original_shape": [b, 4, *latent],
            "activations_shape": [b, 8, *hw], "cond_or_uncond": list(cou), "n_heads": HEADS,
            "sigmas": torch.full((b,), 3.5), "attn_precision": None, **extra}


def naive_probs(q, k, heads):
    b, n, inner = q.shape
    d = inner // heads
    out = torch.zeros(b, heads, n, k.shape[1], dtype=torch.float64)
    for bi in range(b):
        for h in range(heads):
            for i in range(n):
                s = [sum(float(q[bi, i, h * d + c] * k[bi, j, h * d + c]) for c in range(d)) / math.sqrt(d)
                     for j in range(k.shape[1])]
                m = max(s)
                e = [math.exp(x - m) for x in s]
                for j in range(k.shape[1]):
                    out[bi, h, i, j] = e[j] / sum(e)
    return out


class Spy:
    def __init__(self, want=True):
        self.want, self.seen = want, []

    def wants(self, call):
        return self.want

    def observe(self, probs, call):
        self.seen.append((probs, call))


def kernel(q, k, v, heads, attn_precision=None, transformer_options=None):
    return probs_times_v(attention_probs(q, k, heads), v) * 1.0


def test_layer_call_reads_metadata():
    call = layer_call(torch.zeros(2, 16, 8), options(sample_sigmas=torch.tensor([5.0, 3.5, 0.0])))
    assert call.key == ("input", 4, 0) and call.size == (4, 4) and call.latent_size == (8, 8)
    assert call.cond_or_uncond == (1, 0) and call.sigma == 3.5 and not call.grad_pass


def test_layer_call_without_activations_shape_halves_like_a_strided_conv():
    opts = options(latent=(13, 9))
    del opts["activations_shape"]
    assert layer_call(torch.zeros(2, 7 * 5, 8), opts).size == (7, 5)
    with pytest.raises(RuntimeError, match="do not tile"):
        layer_call(torch.zeros(2, 17, 8), options())


def test_output_is_the_kernel_output_and_observers_get_float32_probs():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    calls = []

    def recording_kernel(*args, **kwargs):
        calls.append(kwargs)
        return kernel(*args, **kwargs)

    spy, idle = Spy(), Spy(want=False)
    rep = CrossAttentionReplace(recording_kernel)
    opts = options(**{PASS_KEY: {"observers": [spy, idle]}})
    out = rep(q, k, v, opts)
    assert torch.equal(out, kernel(q, k, v, HEADS))
    assert calls[0]["transformer_options"] is opts                  # the host kernel sees the same options
    probs, call = spy.seen[0]
    assert probs.dtype == torch.float32 and probs.shape == (2, HEADS, 16, 5)
    torch.testing.assert_close(probs.double(), naive_probs(q, k, HEADS), rtol=1e-5, atol=1e-6)
    assert idle.seen == []


def test_a_foreign_replace_still_computes_the_output():
    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    foreign = lambda q, k, v, extra: torch.full_like(q, 7.0)  # noqa: E731
    spy = Spy()
    out = CrossAttentionReplace(kernel, inner=foreign)(q, k, v, options(**{PASS_KEY: {"observers": [spy]}}))
    assert torch.equal(out, torch.full_like(q, 7.0)) and len(spy.seen) == 1


def test_per_pass_observers_and_gradients_through_probs():
    q = torch.randn(1, 16, 8, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(1, 5, 8, dtype=torch.float64), torch.randn(1, 5, 8, dtype=torch.float64)
    spy = Spy()
    rep = CrossAttentionReplace(kernel)
    opts = options(b=1, cou=(0,), **{PASS_KEY: {"grad_pass": True, "observers": [spy]}})
    out = rep(q, k, v, opts)
    probs, call = spy.seen[0]
    assert call.grad_pass and probs.requires_grad
    torch.testing.assert_close(out, probs_times_v(probs, v))
    assert torch.autograd.gradcheck(lambda x: CrossAttentionReplace(kernel)(x, k, v, opts), (q,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_gets_float32_probs_and_a_gradient(dtype):
    """The fast path's precision rule: the UNet runs in fp16/bf16, the probabilities (and so the loss) are fp32."""
    torch.manual_seed(1)
    q32, k32, v32 = torch.randn(1, 16, 8), torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    q = q32.to(dtype).requires_grad_(True)
    spy = Spy()
    opts = options(b=1, cou=(0,), **{PASS_KEY: {"grad_pass": True, "observers": [spy]}})
    out = CrossAttentionReplace(kernel)(q, k32.to(dtype), v32.to(dtype), opts)
    probs, _ = spy.seen[0]
    assert probs.dtype == torch.float32 and out.dtype == dtype
    expected = attention_probs(q32.to(dtype).double(), k32.to(dtype).double(), HEADS)   # same rounded inputs, fp64
    torch.testing.assert_close(probs.double(), expected, atol=1e-6, rtol=1e-5)         # fp32 accuracy, not half's
    (probs[..., 2].sum() * 1.0).backward()
    assert q.grad is not None and q.grad.dtype == dtype and torch.isfinite(q.grad.float()).all()
    assert q.grad.float().abs().sum() > 0


def test_the_router_holds_no_run_state_and_reads_the_session_of_each_run():
    """Clones deep-copy the router (ModelPatcher.clone); what it calls comes from each run's session, so two runs
    of one router (or of its copies) see only their own observers."""
    from attention_align.guidance.records import RunInfo
    from attention_align.nodes.host.context import Session

    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    rep = CrossAttentionReplace(kernel)
    twin = copy.deepcopy({"r": rep})["r"]
    assert twin is not rep and twin == rep and vars(twin).keys() == {"attention_fn", "inner", "added", "absorbed"}
    runs = []
    for router in (rep, twin):
        session, spy = Session(RunInfo(sigmas=torch.tensor([3.5, 0.0]))), Spy()
        session.add(object(), type("Run", (), {"observers": (spy,), "editors": ()})())
        router(q, k, v, options(**{PASS_KEY: {"session": session}}))
        runs.append(spy)
    assert len(runs[0].seen) == len(runs[1].seen) == 1


@pytest.mark.parametrize("cou, expected", [((1, 0), [2, 3]), ((0, 1), [0, 1]), ((0,), [0, 1])])
def test_positive_rows_follow_cond_or_uncond(cou, expected):
    probs = torch.arange(4.0 if len(cou) == 2 else 2.0).reshape(-1, 1, 1, 1)
    call = layer_call(torch.zeros(len(probs), 16, 8), options(b=len(probs), cou=cou))
    assert positive_rows(probs, call).flatten().tolist() == [float(i) for i in expected]


def test_several_positive_chunks_are_averaged_and_none_is_an_error():
    probs = torch.tensor([1.0, 3.0, 10.0]).reshape(3, 1, 1, 1)
    call = layer_call(torch.zeros(3, 16, 8), options(b=3, cou=(0, 1, 0)))
    assert positive_rows(probs, call).flatten().tolist() == [5.5]
    with pytest.raises(ValueError, match="no positive chunk"):
        positive_rows(probs[:1], layer_call(torch.zeros(1, 16, 8), options(b=1, cou=(1,))))


def test_per_tensor_cache_computes_once_per_object_and_forgets_dead_tensors():
    import gc

    from attention_align.guidance.attention import PerTensor

    calls = []
    cache = PerTensor(lambda t: calls.append(1) or float(t.sum()))
    a = torch.tensor([1.0, 2.0])
    assert cache(a) == 3.0 and cache(a) == 3.0 and len(calls) == 1
    b = torch.tensor([1.0, 2.0])                     # equal values, another object
    assert cache(b) == 3.0 and len(calls) == 2
    del a
    gc.collect()
    assert len(cache.values) == 1


def test_a_repeated_context_is_folded_to_the_prompts_own_softmax():
    """ComfyUI pads a batch's prompts to a common length by repeating them: the probabilities summed over the copies
    are exactly the softmax over the prompt itself."""
    from attention_align.guidance.attention import fold_repeats
    from attention_align.guidance.records import RunInfo
    from attention_align.nodes.host.context import Session

    q, k = torch.randn(1, 16, 8, dtype=torch.float64), torch.randn(1, 5, 8, dtype=torch.float64)
    session = Session(RunInfo(sigmas=torch.tensor([3.5, 0.0]), context_tokens=5))
    call = layer_call(q, options(b=1, cou=(0,), **{PASS_KEY: {"session": session}}))
    folded = fold_repeats(attention_probs(q, k.repeat(1, 3, 1), HEADS), call)
    torch.testing.assert_close(folded, attention_probs(q, k, HEADS), rtol=0, atol=1e-12)
    plain = layer_call(q, options(b=1, cou=(0,)))                       # no run info: nothing is folded
    assert fold_repeats(attention_probs(q, k.repeat(1, 3, 1), HEADS), plain).shape[-1] == 15


def test_ipadapter_terms_added_to_the_router_are_gated_by_sigma_and_forwarded_to_a_wrapped_replace():
    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    term = lambda out, q, k, v, extra, weight, **kw: torch.full_like(out, weight)  # noqa: E731
    rep = CrossAttentionReplace(kernel)
    rep.add(term, weight=2.0, sigma_start=10.0, sigma_end=3.0)
    rep.add(term, weight=5.0, sigma_start=3.0, sigma_end=0.0)
    out = rep(q, k, v, options())                                       # σ = 3.5: only the first term
    torch.testing.assert_close(out, kernel(q, k, v, HEADS) + 2.0)
    twin = copy.deepcopy(rep)                                            # what ModelPatcher.clone() does
    twin.add(term, weight=100.0, sigma_start=10.0, sigma_end=0.0)
    assert len(rep.added) == 2 and len(twin.added) == 3                  # the clone's add does not leak back

    class Speaks:
        def __init__(self):
            self.added = []

        def add(self, callback, **kwargs):
            self.added.append(kwargs)

        def __call__(self, q, k, v, extra):
            return torch.zeros_like(q)
    inner = Speaks()
    wrapper = CrossAttentionReplace(kernel, inner=inner)
    wrapper.add(term, weight=1.0, sigma_start=1.0, sigma_end=0.0)
    assert inner.added == [{"weight": 1.0, "sigma_start": 1.0, "sigma_end": 0.0}] and wrapper.added == ()


def test_token_shuffled_passes_are_not_observed_and_prompt_controls_couple_is_refused():
    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    spy = Spy()
    rep = CrossAttentionReplace(kernel)
    rep(q, k, v, options(tpg=True, **{PASS_KEY: {"observers": [spy]}}))
    assert spy.seen == []
    with pytest.raises(ValueError, match="prompt-control's Attention Couple is active"):
        rep(q, k, v, options(cond_or_uncond_hook_couple=[1, 0, 0], **{PASS_KEY: {"observers": [spy]}}))
    rep(q, k, v, options(cond_or_uncond_hook_couple=[1, 0, 0]))         # nothing of ours is active: no error
