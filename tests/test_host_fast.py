"""Fast mode in a real ComfyUI (tiny random-weight model): the loss and gradient come from the sampler's own
evaluation, strength 0 is stock bit for bit on every sampler, the update reaches the result on every sampler, the first
step's gradient is exact mode's, and CFG 1, batches, inpainting and ControlNet work."""
from __future__ import annotations

import dataclasses

import pytest
import test_host_engine
import torch
from conftest import guide
from test_host_engine import nonlinear, restarted, sample, tsam

env = test_host_engine.env          # the engine tests' fixture: the tiny model, T-SAM's prompt


def fast(env, strength, **kw):
    return dataclasses.replace(tsam(env, strength, **kw), fast=True)


@pytest.mark.heavy
def test_strength_zero_is_stock_and_the_update_reaches_the_result_on_every_sampler(env):
    import comfy.samplers

    base = nonlinear(env.model)
    failures = []
    for name in comfy.samplers.KSampler.SAMPLERS:
        if name in env.S.ESTIMATE_ONLY:                 # lcm: x₊ = D(x) + σ₊·noise never sees the update: refused
            m1, _ = guide(env.G, base, fast(env, 3000.0))
            with pytest.raises(Exception, match=f"fast: the {name} sampler builds each step from the model's estimate"):
                sample(env, m1, name)
            continue
        stock = sample(env, base, name)
        m0, log0 = guide(env.G, base, fast(env, 0.0))
        zero = sample(env, m0, name)
        exact = name in env.S.IN_PLACE or name in env.S.CHUNKED_EXACT or name == "ddim"
        if exact and not torch.equal(zero, stock):
            failures.append(f"{name}: strength 0 differs from stock by {(zero - stock).abs().max():.3g}")
        if [r.step for r in log0.steps] != [0, 1]:                      # the loss is still measured (30 of 50 → 2)
            failures.append(f"{name}: measured steps {[r.step for r in log0.steps]}")
        m1, _ = guide(env.G, base, fast(env, 3000.0, guided=10, runaway_bound=False))
        effect = (sample(env, m1, name) - stock).abs().max()
        if not effect > 1e-2:
            failures.append(f"{name}: the update did not reach the result (max change {effect:.3g})")
    assert not failures, "\n".join(failures)


def test_the_sampler_continues_from_the_update_with_its_estimate_made_before_it(env):
    """euler, guided at step 0 only: x₁ = x′₀ + (σ₁ − σ₀)/σ₀·(x′₀ − D(x₀)), with D(x₀) the evaluation the gradient
    came from (the sampler's callback reports x′₀ and D(x₀)); from x₁ on, the stock sampler."""
    import comfy.sample
    import comfy.samplers

    base = nonlinear(env.model)
    m, log = guide(env.G, base, fast(env, 3000.0, guided=10, runaway_bound=False))
    seen = {}

    def callback(step, x0, x, total):
        seen.setdefault(step, (x.clone(), x0.clone()))

    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    out = comfy.sample.sample(m, noise, 3, 5.0, "euler", "normal", env.pos, env.neg, torch.zeros_like(noise),
                              callback=callback)
    assert [r.step for r in log.steps] == [0] and float(log.steps[0].update_ratio[0]) > 0.01
    sigmas = comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), "normal", 3)
    x_moved, denoised = seen[0]
    x1 = x_moved + (sigmas[1] - sigmas[0]) / sigmas[0] * (x_moved - denoised)
    reference = comfy.sample.sample(restarted(base, x1, skip=1), noise, 3, 5.0, "euler", "normal", env.pos, env.neg,
                                    torch.zeros_like(noise))
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-4)


def test_the_first_steps_gradient_is_exact_modes(env):
    """At step 0 both modes evaluate the positive prompt at the same latent: the same loss and the same update."""
    m_exact, exact = guide(env.G, env.model, tsam(env, 10.0))
    sample(env, m_exact, "euler", size=128, steps=4, batch=2)
    m_fast, quick = guide(env.G, env.model, fast(env, 10.0))
    sample(env, m_fast, "euler", size=128, steps=4, batch=2)
    assert torch.equal(exact.steps[0].loss_before, quick.steps[0].loss_before)
    torch.testing.assert_close(exact.steps[0].update_ratio, quick.steps[0].update_ratio, rtol=1e-5, atol=0)
    assert len(quick.steps) == len(exact.steps) == 2


def test_refinement_is_not_run_in_fast_mode_and_the_log_says_so(env):
    m, log = guide(env.G, env.model, fast(env, 10.0, refine="official"))
    sample(env, m, "euler", size=128, steps=5)
    assert all(r.iterations is None for r in log.steps)
    assert any("fast mode: no refinement" in n for n in log.notes)


def test_cfg_one_batches_inpainting_and_controlnet(env, host):
    import comfy.controlnet
    import tiny_checkpoint

    m, log = guide(env.G, env.model, fast(env, 10.0))
    sample(env, m, "euler", size=128, steps=4, cfg=1.0, batch=2)
    assert log.steps and log.steps[0].loss_before.shape == (2,)
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., :, :64] = 1.0
    latent = {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), "noise_mask": mask}
    plain = sample(env, env.model, "euler", latent=dict(latent), steps=4)
    m, log = guide(env.G, env.model, fast(env, 3000.0, runaway_bound=False))
    masked = sample(env, m, "euler", latent=dict(latent), steps=4)
    assert torch.equal(masked[..., :, 8:], plain[..., :, 8:]) or (masked[..., :, 8:] - plain[..., :, 8:]).abs().max() \
        < 1e-3 * (masked[..., :, :8] - plain[..., :, :8]).abs().max()
    path = host.base_dir / "models" / "controlnet" / "tiny_controlnet.safetensors"
    if not path.exists():
        tiny_checkpoint.build_controlnet(str(path))
    control = comfy.controlnet.load_controlnet(str(path))
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(1))
    pos_c, _ = host.node_class("ControlNetApplyAdvanced")().apply_controlnet(env.pos, env.neg, control, hint, 1.0,
                                                                             0.0, 1.0, vae=None)
    m, log = guide(env.G, env.model, fast(env, 10.0))
    sample(env, m, "euler", size=128, steps=3, positive=pos_c)
    assert log.steps and all(torch.isfinite(r.loss_before).all() for r in log.steps)
