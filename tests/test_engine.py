"""The update loop: plain steps, the official refinement control flows, per-sample independence, interrupts."""
import pytest
import torch
from attention_align.guidance.engine import PassMaps, StopForward, guided_step
from attention_align.guidance.schedule import make_plan
from attention_align.nodes.host.context import PASS_KEY
from attention_align.nodes.host.routers import layer_call

CENTRES = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.4, -0.8]], dtype=torch.float64)


def toy_loss(z, centre):
    """A loss that falls gradually under gradient steps and never reaches 0."""
    return 0.1 + ((z - centre) ** 2).sum()


def batch_grad_fn(calls):
    def grad_fn(x):
        calls.append(x.clone())
        z = x.detach().clone().requires_grad_()
        losses = torch.stack([toy_loss(z[b], CENTRES[b]) for b in range(z.shape[0])])
        (g,) = torch.autograd.grad(losses.sum(), z)
        return losses.detach(), g
    return grad_fn


def grad(loss, z):
    return torch.autograd.grad(loss, z)[0]


def official_tsam_step(z, centre, alpha, refine, threshold):
    """Literal transliteration of T-SAM's released loop (pipeline_stable_diffusion_x_2.py) for one sample."""
    evaluations = 0
    z = z.clone().requires_grad_()
    loss = toy_loss(z, centre)
    evaluations += 1
    if refine:
        loss = 100.0
        for cnt in range(30):
            if cnt == 20 and loss > threshold:
                break
            z = z.clone().detach().requires_grad_(True)
            loss = toy_loss(z, centre)
            evaluations += 1
            if loss != 0:
                z = z - alpha * grad(loss, z)
        z = z.clone().detach().requires_grad_(True)
        loss = toy_loss(z, centre)
        evaluations += 1
    z = z - alpha * grad(loss, z)
    return z.detach(), evaluations


def official_ae_step(z, centre, alpha, refine_threshold, max_refinement_steps=20):
    """Literal transliteration of Attend-and-Excite's step (diffusers pipeline) for one sample."""
    evaluations = 0
    z = z.clone().requires_grad_()
    loss = toy_loss(z, centre)
    evaluations += 1
    if refine_threshold is not None and loss > 1.0 - refine_threshold:
        target_loss = max(0, 1.0 - refine_threshold)
        iteration = 0
        while loss > target_loss:
            iteration += 1
            z = z.clone().detach().requires_grad_(True)
            loss = toy_loss(z, centre)
            evaluations += 1
            if loss != 0:
                z = z - alpha * grad(loss, z)
            if iteration >= max_refinement_steps:
                break
        z = z.clone().detach().requires_grad_(True)
        loss = toy_loss(z, centre)
        evaluations += 1
    if loss != 0:
        z = z - alpha * grad(loss, z)
    return z.detach(), evaluations


def test_plain_step_is_x_minus_alpha_delta():
    x = torch.zeros(2, 3, dtype=torch.float64)
    plan = make_plan(10, 50, 0.25, decay=False)
    calls = []
    new, rec = guided_step(x, 0, 3.0, plan, batch_grad_fn(calls))
    torch.testing.assert_close(new, x - 0.25 * 2 * (x - CENTRES))
    assert len(calls) == 1 and torch.equal(x, torch.zeros(2, 3, dtype=torch.float64))   # input untouched
    assert rec.step == 0 and rec.sigma == 3.0 and rec.loss_before.shape == (2,)


@pytest.mark.parametrize("alpha, threshold", [(0.004, 0.9), (0.004, 0.1), (0.03, 0.9), (0.004, 0.377)])
def test_tsam_refinement_matches_the_official_loop(alpha, threshold):
    """Gives up at iteration 20 when still above the threshold, else runs all 30 iterations."""
    x = torch.zeros(2, 3, dtype=torch.float64)
    plan = make_plan(50, 30, 1.0, decay=False, strength=alpha,
                     refine_paper_thresholds={0: threshold}, max_iters=30, stop_below=False, give_up_at=20)
    calls = []
    new, rec = guided_step(x, 0, 1.0, plan, batch_grad_fn(calls))
    for b in range(2):
        ref, evaluations = official_tsam_step(x[b], CENTRES[b], alpha, True, threshold)
        torch.testing.assert_close(new[b], ref, rtol=1e-12, atol=1e-12)
        # official: the step's forward, one per iteration, one after; ours reuses the step's forward
        assert evaluations == int(rec.iterations[b]) + 2      # step forward + iterations + final forward
    assert len(calls) == 1 + int(rec.iterations.max())


@pytest.mark.parametrize("step_threshold, alpha", [(0.05, 0.05), (0.8, 0.05), (0.5, 0.001), (0.8, 0.3)])
def test_attend_and_excite_refinement_matches_the_official_loop(step_threshold, alpha):
    x = torch.zeros(2, 3, dtype=torch.float64)
    plan = make_plan(50, 25, 1.0, decay=False, strength=alpha, refine_paper_thresholds={0: 1.0 - step_threshold},
                     max_iters=20, stop_below=True, enter_above=True)
    new, rec = guided_step(x, 0, 1.0, plan, batch_grad_fn([]))
    for b in range(2):
        ref, evaluations = official_ae_step(x[b], CENTRES[b], alpha, step_threshold)
        torch.testing.assert_close(new[b], ref, rtol=1e-12, atol=1e-12)


def test_samples_refine_independently():
    """Sample 1 starts far from its centre and refines longer; each equals a batch-1 run."""
    x = torch.zeros(2, 3, dtype=torch.float64)
    plan = make_plan(50, 25, 1.0, decay=False, strength=0.05, refine_paper_thresholds={0: 0.3}, max_iters=20,
                     stop_below=True, enter_above=True)
    both, rec = guided_step(x, 0, 1.0, plan, batch_grad_fn([]))
    assert rec.iterations[0] != rec.iterations[1]
    for b in range(2):
        def one(xb, b=b):
            z = xb.detach().clone().requires_grad_()
            loss = toy_loss(z[0], CENTRES[b])
            return loss.detach()[None], torch.autograd.grad(loss, z)[0]
        alone, _ = guided_step(x[b:b + 1], 0, 1.0, plan, one)
        torch.testing.assert_close(both[b], alone[0], rtol=1e-12, atol=1e-12)


def test_strength_zero_changes_nothing_and_skips_refinement():
    x = torch.rand(2, 3, dtype=torch.float64)
    plan = make_plan(50, 30, 5.0, strength=0.0, refine_paper_thresholds={0: 0.1}, max_iters=30, give_up_at=20)
    calls = []
    new, rec = guided_step(x, 0, 1.0, plan, batch_grad_fn(calls))
    assert torch.equal(new, x) and len(calls) == 1 and rec.iterations is None


def test_interrupt_and_progress_are_checked_in_every_iteration():
    x = torch.zeros(2, 3, dtype=torch.float64)
    plan = make_plan(50, 30, 1.0, decay=False, strength=0.001, refine_paper_thresholds={0: 0.0}, max_iters=30,
                     stop_below=False)
    seen, ticks = [], []

    class Stop(Exception):
        pass

    def check():
        seen.append(1)
        if len(seen) == 5:
            raise Stop

    with pytest.raises(Stop):
        guided_step(x, 0, 1.0, plan, batch_grad_fn([]), check_interrupt=check, progress=lambda k, n: ticks.append(k))
    assert ticks == [1, 2, 3]


def test_pass_maps_average_layers_of_one_level_in_grad_passes_only():
    def call(block, hw, grad=True, b=2):
        opts = {"block": block, "block_index": 0, "original_shape": [b, 4, 8, 8], "activations_shape": [b, 8, *hw],
                "cond_or_uncond": [0], PASS_KEY: {"grad_pass": grad}}
        return layer_call(torch.zeros(b, hw[0] * hw[1], 8), opts)

    store = PassMaps([("input", 5, 0), ("output", 0, 0)])
    a, b = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    assert store.wants(call(("input", 5), (2, 2))) and not store.wants(call(("input", 1), (8, 8)))
    assert not store.wants(call(("input", 4), (2, 2)))               # same map size, not a layer the loss reads
    assert not store.wants(call(("input", 5), (2, 2), grad=False))
    store.observe(a, call(("input", 5), (2, 2)))
    assert not store.wants(call(("input", 5), (2, 2)))               # a layer run twice counts once
    store.observe(b, call(("output", 0), (2, 2)))
    maps = store.maps()
    assert maps.shape == (2, 5, 2, 2)
    expected = ((a.mean(1) + b.mean(1)) / 2).transpose(1, 2).reshape(2, 5, 2, 2)
    torch.testing.assert_close(maps, expected)
    with pytest.raises(RuntimeError, match="none of the cross-attention layers the loss reads"):
        PassMaps([("input", 5, 0)]).maps()


def test_pass_maps_stop_once_every_layer_read_was_seen_in_any_order():
    def call(block):
        opts = {"block": block, "block_index": 0, "original_shape": [1, 4, 8, 8], "activations_shape": [1, 8, 2, 2],
                "cond_or_uncond": [0], PASS_KEY: {"grad_pass": True}}
        return layer_call(torch.zeros(1, 4, 8), opts)

    store = PassMaps([("input", 5, 0), ("output", 0, 0)], truncate=True)
    store.observe(torch.rand(1, 3, 4, 5), call(("output", 0)))        # a foreign pack ran them out of order
    with pytest.raises(StopForward):
        store.observe(torch.rand(1, 3, 4, 5), call(("input", 5)))
    untruncated = PassMaps([("input", 5, 0), ("output", 0, 0)])
    untruncated.observe(torch.rand(1, 3, 4, 5), call(("output", 0)))
    untruncated.observe(torch.rand(1, 3, 4, 5), call(("input", 5)))   # no stop without truncate


def test_a_runaway_update_is_undone_for_that_sample_and_it_is_frozen_afterwards():
    """Sample 1's gradient is 1000× its latent: its step is undone and reported; sample 0 is guided as usual."""
    plan = make_plan(10, 25, 1.0, decay=False)
    x = torch.ones(2, 4, 2, 2)

    def grad_fn(z):
        return torch.zeros(2), torch.stack([0.1 * torch.ones(4, 2, 2), 1000 * torch.ones(4, 2, 2)])

    new, rec = guided_step(x, 0, 1.0, plan, grad_fn, max_update_ratio=1.0)
    torch.testing.assert_close(new[0], torch.full((4, 2, 2), 0.9))
    assert torch.equal(new[1], x[1])
    assert rec.halted.tolist() == [False, True]
    torch.testing.assert_close(rec.update_ratio, torch.tensor([0.1, 1000.0]))
    frozen_new, rec2 = guided_step(new, 1, 1.0, plan, lambda z: (torch.zeros(2), 0.1 * torch.ones_like(z)),
                                   frozen=rec.halted, max_update_ratio=1.0)
    assert torch.equal(frozen_new[1], new[1]) and not rec2.halted.any()         # frozen: measured, not moved
    torch.testing.assert_close(frozen_new[0], new[0] - 0.1)


@pytest.mark.parametrize("bad", ["nan_gradient", "inf_loss"])
def test_non_finite_steps_are_undone(bad):
    plan = make_plan(10, 25, 1.0, decay=False)
    x = torch.ones(2, 4, 2, 2)

    def grad_fn(z):
        g = 0.1 * torch.ones_like(z)
        loss = torch.zeros(2)
        if bad == "nan_gradient":
            g[0, 0, 0, 0] = float("nan")
        else:
            loss[0] = float("inf")
        return loss, g

    new, rec = guided_step(x, 0, 1.0, plan, grad_fn)           # no ratio bound: finiteness alone
    assert rec.halted.tolist() == [True, False] and torch.equal(new[0], x[0]) and new.isfinite().all()
    torch.testing.assert_close(new[1], x[1] - 0.1)
