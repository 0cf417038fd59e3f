"""Attention Regulation against a transliteration of the official processor; the editor's behaviour."""
import math

import pytest
import torch
from attention_align.guidance.attn_regulation import RegulationSettings, gaussian_bank, optimise_bias, regulation_loss
from attention_align.nodes.host.context import PASS_KEY
from attention_align.nodes.host.routers import layer_call


# ---- the official code (attention_regulation/attn_processor.py), with grad scoped by a context ------------------
def official_similar_distribution(modified_maps, target_ids, threshold=0.8):
    width = modified_maps.shape[1]
    return torch.mean((torch.sum(modified_maps / (width ** 2), dim=(-2, -3)) - (threshold / target_ids.shape[0])) ** 2)


def official_loss_fn(modified_maps, target_ids, weights, threshold=0.8, gamma=1.0, delta=1.0, epsilon=1.0):
    batch_size, width, _, _ = modified_maps.shape
    c2 = torch.mean((torch.quantile(modified_maps.view(batch_size, -1, target_ids.shape[0]), 0.9, dim=-2) - 0.9) ** 2)
    sim = official_similar_distribution(modified_maps, target_ids, threshold)
    return gamma * c2 + delta * sim + epsilon * torch.mean(weights ** 2)


def official_optimise(attention_probs, relevant_attn, target_ids, internals, current_step, max_iter=20, lr=1e2,
                      decay=0.25, global_decay=0.99):
    target_ids = torch.tensor(target_ids[0])
    batch_size, width, _, seq_len = relevant_attn.shape
    X = torch.arange(0, width, 1, dtype=torch.float32)
    y = X.view(-1, 1)
    sigma = width // 16
    centres = [(i, j) for i in range(2 * sigma, width, 2 * sigma) for j in range(2 * sigma, width, 2 * sigma)]
    temp = [torch.exp(-((X - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2)).unsqueeze(0) for (x0, y0) in centres]
    gaussian_maps_tensor = torch.cat(temp, dim=0).unsqueeze(0).unsqueeze(-1).requires_grad_(True)
    best_loss = float("inf")
    with torch.enable_grad():
        weights = torch.rand((batch_size, len(centres), len(target_ids)), dtype=torch.float32,
                             requires_grad=True).unsqueeze(-2).unsqueeze(-2)
        additive_attn = torch.zeros_like(relevant_attn, dtype=torch.float32)
        threshold = min(1.0, 0.2 * target_ids.shape[0])
        if current_step != 0:
            ma_attn = internals["ma_attn"].pop(0)
        else:
            internals.setdefault("ma_attn", [])
            ma_attn = torch.sum(gaussian_maps_tensor * weights, dim=1)
        for _ in range(max_iter):
            additive_attn[:, :, :, target_ids] = torch.sum(gaussian_maps_tensor * weights, dim=1)
            modified_maps = relevant_attn + additive_attn
            loss = official_loss_fn(modified_maps.softmax(dim=-1)[:, :, :, target_ids], target_ids, weights,
                                    threshold=threshold, gamma=1, delta=80, epsilon=9e-2)
            if loss < best_loss:
                best_loss = loss
                best_additive_attn = additive_attn.clone().detach().requires_grad_(False)
            grad = torch.autograd.grad(loss, [weights], retain_graph=False)[0]
            weights = weights - batch_size * lr * grad
        internals["ma_attn"].append(best_additive_attn[:, :, :, target_ids].clone().detach())
        best_additive_attn[:, :, :, target_ids] = ma_attn * decay + best_additive_attn[:, :, :, target_ids] * (1 - decay)
        current_decay = global_decay ** current_step
        best_relevant_attn = (relevant_attn + current_decay * best_additive_attn).to(torch.float16)
    attention_probs[attention_probs.shape[0] // 2:] = best_relevant_attn
    return attention_probs
# ------------------------------------------------------------------------------------------------------------------


def test_gaussian_bank_is_the_official_one():
    bank = gaussian_bank(16, 16)
    assert bank.shape == (49, 16, 16)
    assert bank[0, 2, 2] == 1.0 and bank[0, 2, 3] == pytest.approx(math.exp(-0.5))
    assert bank[1, 4, 2] == 1.0                      # second centre: x₀ = 2, y₀ = 4 (x₀ in the outer loop)
    assert gaussian_bank(24, 24).shape[0] == 121 and gaussian_bank(64, 64).shape[0] == 49
    assert gaussian_bank(8, 12).shape == (5 * 3, 8, 12)                # non-square, σ = 1
    with pytest.raises(ValueError, match="maps of 2×2 are too small"):
        gaussian_bank(2, 2)


def test_loss_and_its_gradient_match_the_official_loss():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(8, 16, 16, 2, generator=g).softmax(dim=1)
    weights = torch.rand(8, 49, 2, generator=g, requires_grad=True)
    ours = regulation_loss(maps, weights, threshold=0.4)
    theirs = official_loss_fn(maps, torch.tensor([2, 5]), weights[:, :, None, None, :], 0.4, 1, 80, 0.09)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    g1 = torch.autograd.grad(ours, weights)[0]
    g2 = torch.autograd.grad(theirs, weights)[0]
    torch.testing.assert_close(g1, g2)


def editor_call(step, b=2, heads=2, hw=(16, 16), cou=(1, 0), key=("input", 7), grad=False):
    schedule = torch.linspace(14.0, 0.0, 51)
    opts = {"block": key, "block_index": 0, "original_shape": [b, 4, 64, 64], "activations_shape": [b, 320, *hw],
            "cond_or_uncond": list(cou), "sigmas": torch.full((b,), float(schedule[step])), "sample_sigmas": schedule,
            PASS_KEY: {"grad_pass": grad}}
    return layer_call(torch.zeros(b, hw[0] * hw[1], 8), opts)


@pytest.mark.parametrize("targets", [[2, 5], [3]])
def test_two_steps_match_the_official_optimiser_blend_and_decay(targets):
    """Step 0 blends with the initial random bias, step 1 with step 0's best, each scaled by 0.99^step."""
    heads, seq = 2, 10
    logits = [torch.randn(2 * heads, 16, 16, seq, generator=torch.Generator().manual_seed(s)) * 2 for s in (1, 2)]
    internals = {}
    editor = RegulationSettings(targets=targets, eos_index=7, seed=123).for_run()
    for step, lg in enumerate(logits):
        torch.manual_seed(123 if step == 0 else 0)
        if step == 1:                                    # the official stream continues; align ours to it
            editor.generator.set_state(torch.random.get_rng_state())
        official = official_optimise(lg.clone(), lg[heads:].clone(), [targets], internals, step)
        scores = lg.reshape(2, heads, 256, seq)          # [b = uncond, cond; heads; h·w; T]
        ours = editor.edit_scores(scores, editor_call(step)).reshape(2 * heads, 16, 16, seq)
        torch.testing.assert_close(ours[heads:].half().float(), official[heads:].float(), atol=2e-3, rtol=2 ** -10)  # one fp16 ulp
        assert torch.equal(ours[:heads], lg[:heads])     # the negative prompt's rows are untouched


def test_editor_is_deterministic_under_its_seed_and_restarts_per_run():
    scores = torch.randn(2, 2, 256, 10, generator=torch.Generator().manual_seed(5))
    def run(seed):
        return RegulationSettings(targets=[2], eos_index=7, seed=seed).for_run().edit_scores(scores, editor_call(0))

    assert torch.equal(run(4), run(4)) and not torch.equal(run(4), run(5))
    settings = RegulationSettings(targets=[2], eos_index=7, seed=4)
    editor = settings.for_run()
    first = editor.edit_scores(scores, editor_call(0))
    assert editor.previous
    twin = settings.for_run()                            # the next sampling run: its own state, same stream
    assert twin.previous == {} and twin.previous is not editor.previous
    assert torch.equal(twin.edit_scores(scores, editor_call(0)), first)


def test_editor_scope_bos_eos_restore_and_grad_mode():
    editor = RegulationSettings(targets=[2, 3], eos_index=7, seed=0).for_run()
    assert editor.wants(editor_call(24)) and not editor.wants(editor_call(25))         # first 25 of 50
    assert not editor.wants(editor_call(0, grad=True)) and not editor.wants(editor_call(0, cou=(1,), b=1))
    scores = torch.randn(2, 2, 256, 10)
    with torch.no_grad():
        edited = editor.edit_scores(scores, editor_call(0))
        probs = editor.edit_probs(edited.softmax(-1), scores, editor_call(0))
    assert torch.is_grad_enabled()                       # restored after the no_grad block, never toggled inside
    plain = scores.softmax(-1)
    torch.testing.assert_close(probs[..., [0, 7]], plain[..., [0, 7]])
    assert not torch.allclose(probs[1, ..., [2, 3]], plain[1, ..., [2, 3]])
    with torch.inference_mode():
        editor.edit_scores(scores, editor_call(1))       # works inside ComfyUI's inference mode


def test_optimisation_lowers_the_regulation_loss_and_keeps_the_best():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(4, 16, 16, 10, generator=g)
    init = torch.rand(4, 49, 2, generator=g)
    best, initial, before, after = optimise_bias(scores, [2, 5], init)

    def loss_of(bias):
        edited = scores.clone()
        edited[..., [2, 5]] += bias
        return regulation_loss(edited.softmax(-1)[..., [2, 5]], torch.zeros(1), 0.4).item()

    assert loss_of(best) < loss_of(initial)
    assert after < before
