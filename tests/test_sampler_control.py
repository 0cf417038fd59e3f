"""The two ways a latent update survives a sampler, as pure code, driven by samplers written here in a few lines."""
import pytest
import torch
from attention_align.nodes.host.sampler_control import chunked_function, in_place_function

SIGMAS = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0])


def denoiser(x, sigma, **kwargs):
    """A deterministic, x-dependent denoiser (so that where the update lands matters)."""
    return torch.tanh(x) * 0.5 + 0.1 * sigma


def euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * torch.ones(1), **(extra_args or {}))
        if callback is not None:
            callback({"i": i, "x": x})
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def two_step(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """A multistep sampler: each step uses the previous step's denoised value (history a restart would lose)."""
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * torch.ones(1))
        d = denoised if old is None else 1.5 * denoised - 0.5 * old
        x = x + (x - d) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        old = denoised
    return x


def noisy(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """An ancestral-style sampler that draws noise from ``noise_sampler`` (or makes its own from the seed)."""
    if noise_sampler is None:
        g = torch.Generator().manual_seed(extra_args["seed"])
        noise_sampler = lambda s, t: torch.randn(x.shape, generator=g)  # noqa: E731
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * torch.ones(1))
        x = denoised + 0.5 * sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


def shift(amount, at):
    """A step callback adding ``amount`` at the steps ``at``; records what it saw."""
    seen = []

    def step(model, x, i, sigma, extra_args):
        seen.append((i, float(sigma.reshape(-1)[0])))
        return x + amount if i in at else x.clone()
    step.seen = seen
    return step


def by_hand(sampler, x, sigmas, updates):
    """Reference for a one-evaluation-per-step sampler without history: step by step, the update added before the
    model sees step i."""
    for i in range(len(sigmas) - 1):
        x = x + updates.get(i, 0.0)
        x = sampler(denoiser, x, sigmas[i:i + 2])
    return x


def test_in_place_lands_each_update_before_its_step_and_nothing_else_changes():
    x = torch.linspace(-2, 2, 6)
    step = shift(0.3, {0, 2})
    out = in_place_function(euler, step, [0, 2])(denoiser, x.clone(), SIGMAS)
    torch.testing.assert_close(out, by_hand(euler, x, SIGMAS, {0: 0.3, 2: 0.3}), rtol=0, atol=1e-6)
    assert step.seen == [(0, 8.0), (2, 2.0)]
    unchanged = in_place_function(euler, shift(0.0, set()), [0, 1, 2])(denoiser, x.clone(), SIGMAS)
    assert torch.equal(unchanged, euler(denoiser, x.clone(), SIGMAS))      # a step that changes nothing: stock


def test_in_place_keeps_a_multistep_samplers_history():
    """The update goes into the sampler's own tensor, so its history (old denoised) survives: the result differs
    from restarting the sampler from the updated latent, and equals the stock loop with x changed in place."""
    x = torch.linspace(-1, 1, 5)
    out = in_place_function(two_step, shift(0.2, {1}), [1])(denoiser, x.clone(), SIGMAS)

    ref, old, xx = None, None, x.clone()
    for i in range(4):
        if i == 1:
            xx = xx + 0.2
        den = denoiser(xx, SIGMAS[i])
        d = den if old is None else 1.5 * den - 0.5 * old
        xx = xx + (xx - d) / SIGMAS[i] * (SIGMAS[i + 1] - SIGMAS[i])
        old = den
    ref = xx
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    restarted = two_step(denoiser, two_step(denoiser, x.clone(), SIGMAS[:2]) + 0.2, SIGMAS[1:])
    assert not torch.allclose(out, restarted)


def test_in_place_refuses_a_run_that_never_evaluated_a_guided_sigma():
    def skipping(model, x, sigmas, **kwargs):       # evaluates only at the first σ
        return model(x, sigmas[0] * torch.ones(1))

    with pytest.raises(RuntimeError, match=r"guided steps \[2\] were never evaluated.*sampler skipping"):
        in_place_function(skipping, shift(0.1, {2}), [0, 2], label="skipping")(denoiser, torch.zeros(3), SIGMAS)


def test_chunked_runs_guided_steps_one_at_a_time_then_the_rest_in_one_call():
    calls = []

    def counting(model, x, sigmas, extra_args=None, callback=None, disable=None):
        calls.append((sigmas.tolist(), disable))
        return euler(model, x, sigmas, extra_args, callback)

    x = torch.linspace(-2, 2, 6)
    step = shift(0.25, {0, 1})
    steps_seen = []
    out = chunked_function(counting, step, 2)(denoiser, x.clone(), SIGMAS, callback=lambda d: steps_seen.append(d["i"]),
                                             disable=False)
    assert calls == [([8.0, 4.0], True), ([4.0, 2.0], True), ([2.0, 1.0, 0.0], False)]
    assert steps_seen == [0, 1, 2, 3]                  # the callback sees the whole run's step indices
    torch.testing.assert_close(out, by_hand(euler, x, SIGMAS, {0: 0.25, 1: 0.25}), rtol=0, atol=1e-6)


def test_chunked_shares_one_noise_stream_and_matches_the_stock_run_without_updates():
    x = torch.linspace(-1, 1, 4)
    made = []

    def factory(x_, sigmas, seed):
        made.append(seed)
        g = torch.Generator().manual_seed(seed)
        return lambda s, t: torch.randn(x_.shape, generator=g)

    stock_noise = factory(x, SIGMAS, 11)
    stock = noisy(denoiser, x.clone(), SIGMAS, noise_sampler=stock_noise)
    chunked = chunked_function(noisy, shift(0.0, set()), 3, noise_sampler=factory)(
        denoiser, x.clone(), SIGMAS, extra_args={"seed": 11})
    assert made == [11, 11]                            # one stream for the run (the first call built the reference)
    assert torch.equal(chunked, stock)


def test_chunked_reseeds_a_sampler_that_draws_its_own_noise_and_skips_a_final_zero_chunk():
    seeds = []

    def own_noise(model, x, sigmas, extra_args=None, callback=None, disable=None):
        seeds.append(extra_args["seed"])
        return x

    chunked_function(own_noise, shift(0.0, set()), 2, reseed=True)(denoiser, torch.zeros(2), SIGMAS,
                                                                  extra_args={"seed": 5})
    assert seeds == [5, 6, 7]                          # chunk offsets, so chunks never repeat one noise draw
    seeds.clear()
    chunked_function(own_noise, shift(0.0, set()), 2)(denoiser, torch.zeros(2), SIGMAS, extra_args={"seed": 5})
    assert seeds == [5, 5, 5]
    ends = []

    def record(model, x, sigmas, **kwargs):
        ends.append(float(sigmas[-1]))
        return x

    chunked_function(record, shift(0.0, set()), 4, skip_final_zero=True)(denoiser, torch.zeros(2), SIGMAS)
    assert ends == [4.0, 2.0, 1.0]                     # the last chunk (1 → 0) is not run


def fast_shift(amount, at):
    """A fast step: the sampler's own evaluation at x (made here), and x moved by ``amount`` at the steps ``at``."""
    seen = []

    def step(model, x, i, sigma, extra_args):
        seen.append(i)
        denoised = model(x, sigma, **extra_args)
        return (x + amount if i in at else x.clone()), denoised
    step.seen = seen
    return step


def test_fast_mode_moves_the_latent_and_keeps_the_estimate_made_before_the_move():
    """One evaluation per guided step: the sampler's step is taken from x' = x + δ with D(x), i.e.
    x_{i+1} = x' + (x' − D(x))/σ_i · (σ_{i+1} − σ_i) (no second evaluation at x')."""
    x = torch.linspace(-2, 2, 6)
    calls = []

    def counting(x_, sigma, **kw):
        calls.append(float(sigma.reshape(-1)[0]))
        return denoiser(x_, sigma)

    out = in_place_function(euler, fast_shift(0.3, {0, 1}), [0, 1], fast=True)(counting, x.clone(), SIGMAS)
    ref = x.clone()
    for i in range(4):
        d_est = denoiser(ref, SIGMAS[i])
        if i in (0, 1):
            ref = ref + 0.3
        ref = ref + (ref - d_est) / SIGMAS[i] * (SIGMAS[i + 1] - SIGMAS[i])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert calls == [8.0, 4.0, 2.0, 1.0]                             # one model evaluation per step, no more
    chunked = chunked_function(euler, fast_shift(0.3, {0, 1}), 2, fast=True)(denoiser, x.clone(), SIGMAS)
    torch.testing.assert_close(chunked, out, rtol=0, atol=1e-6)       # both paths agree
    unchanged = in_place_function(euler, fast_shift(0.0, set()), [0, 1], fast=True)(denoiser, x.clone(), SIGMAS)
    assert torch.equal(unchanged, euler(denoiser, x.clone(), SIGMAS))  # no move: stock, bit for bit
