"""Attention Modulation properties: neutral = identity, τ < 1 sharpens, masking, reweighting, phase switches."""
import math

import pytest
import torch
from attention_align.guidance.attention import attention_probs, attention_scores, probs_times_v
from attention_align.guidance.modulation import (
    CrossAttentionModulation,
    ModulationSettings,
    mask_to_owner,
    modulation_bias,
    reweight,
)
from attention_align.nodes.host.context import PASS_KEY
from attention_align.nodes.host.routers import CrossAttentionReplace, SelfAttentionTemperature, layer_call

SCHEDULE = torch.linspace(14.0, 0.0, 21)            # a 20-step run


def with_editor(opts, editor):
    """Layer-call options of a run whose session has ``editor`` (as the router reads them)."""
    return {**opts, PASS_KEY: {**(opts.get(PASS_KEY) or {}), "editors": [editor]}}


def call(step, b=2, n=16, cou=(1, 0)):
    opts = {"block": ("input", 4), "block_index": 0, "original_shape": [b, 4, 8, 8], "activations_shape": [b, 8, 4, 4],
            "cond_or_uncond": list(cou), "sigmas": torch.full((b,), float(SCHEDULE[step])), "sample_sigmas": SCHEDULE,
            "n_heads": 2, "attn_precision": None}
    return opts, layer_call(torch.zeros(b, n, 8), opts)


def kernel(q, k, v, heads, attn_precision=None, transformer_options=None):
    return probs_times_v(attention_probs(q, k, heads), v)


def entropy(p):
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def test_neutral_settings_are_exact_identity():
    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    settings = ModulationSettings()
    seen = []

    def recording(q_, *a, **kw):
        seen.append(q_)
        return kernel(q_, *a, **kw)

    opts, c = call(0)
    out = SelfAttentionTemperature(recording, settings)(q, k, v, opts)
    assert seen[0] is q and torch.equal(out, kernel(q, k, v, 2))
    editor = CrossAttentionModulation(settings, [[2, 3], [6, 7]], [3, 7], [2, 6])
    assert not any(editor.wants(call(s)[1]) for s in range(20))
    rep = CrossAttentionReplace(kernel)
    kv = torch.randn(2, 10, 8)
    assert torch.equal(rep(q, kv, kv, with_editor(opts, editor)), kernel(q, kv, kv, 2))


def test_low_temperature_lowers_every_rows_entropy_in_the_early_phase():
    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    probs = []

    def recording(q_, k_, v_, heads, **kw):
        probs.append(attention_probs(q_, k_, heads))
        return kernel(q_, k_, v_, heads)

    replace = SelfAttentionTemperature(recording, ModulationSettings(temperature=0.7, temperature_until=0.3))
    replace(q, k, v, call(0)[0])
    replace(q, k, v, call(6)[0])                    # p = 0.3: over, τ = 1 again
    plain = attention_probs(q, k, 2)
    assert torch.all(entropy(probs[0]) < entropy(plain))
    assert torch.equal(probs[1], plain)


def test_masking_keeps_only_each_patchs_own_entity():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 2, 16, 10, generator=g) * 2
    groups = [[2, 3], [5, 6, 7]]
    out = mask_to_owner(scores, scores.softmax(-1), groups).softmax(-1)
    torch.testing.assert_close(out.sum(-1), torch.ones(3, 2, 16))
    p = scores.softmax(-1)
    for idx in torch.cartesian_prod(torch.arange(3), torch.arange(2), torch.arange(16)).tolist():
        row, orig = out[tuple(idx)], p[tuple(idx)]
        masses = [sum(float(orig[t]) for t in g_) for g_ in groups]
        owner = masses.index(max(masses))
        for gi, g_ in enumerate(groups):
            mass = sum(float(row[t]) for t in g_)
            assert (mass > 0) if gi == owner else (mass == 0.0)
        free = [0, 1, 4, 8, 9]                     # tokens of no group keep their relative weights
        ratio = [float(row[t] / orig[t]) for t in free]
        assert max(ratio) == pytest.approx(min(ratio), rel=1e-4)


def test_reweighting_multiplies_the_columns_and_renormalises():
    scores = torch.randn(4, 10)
    before, after = scores.softmax(-1), reweight(scores, [2, 3], 1.5).softmax(-1)
    torch.testing.assert_close(after[:, 2] / after[:, 5], 1.5 * before[:, 2] / before[:, 5])
    torch.testing.assert_close(after[:, 4] / after[:, 5], before[:, 4] / before[:, 5])
    assert reweight(scores, [2], 1.0) is scores


def test_phase_curves_switch_at_the_right_steps():
    s = ModulationSettings(temperature=0.8, temperature_until=0.3, mask_until=0.4, noun_weight=1.5,
                           attribute_weight=2.0, switch=0.5)
    steps = range(20)
    assert [i for i in steps if s.temperature_at(i / 20) != 1.0] == list(range(6))      # p < 0.3
    assert [i for i in steps if s.masking_at(i / 20)] == list(range(8))                    # p < 0.4
    assert [s.weights_at(i / 20) for i in (0, 9, 10, 19)] == [(1.5, 1.0), (1.5, 1.0), (1.0, 2.0), (1.0, 2.0)]
    editor = CrossAttentionModulation(ModulationSettings(mask_until=0.25), [[2], [5]], [2, 5], [])
    assert [i for i in steps if editor.wants(call(i)[1])] == list(range(5))
    assert not editor.wants(call(0, b=1, cou=(1,))[1])                                   # negative rows alone


def test_the_bias_equals_masking_then_reweighting_computed_explicitly():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(3, 16, 8, generator=g) * 2, torch.randn(3, 10, 8, generator=g) * 2
    groups, nouns, attrs = [[2, 3], [5, 6, 7]], [3, 7], [2, 5, 6]
    column = torch.zeros(10)
    column[nouns] += math.log(1.5)
    column[attrs] += math.log(0.5)
    got = (attention_scores(q, k, 2) + modulation_bias(q, k, 2, groups, True, column)).softmax(-1)
    scores = attention_scores(q, k, 2)
    reference = reweight(reweight(mask_to_owner(scores, scores.softmax(-1), groups), nouns, 1.5), attrs, 0.5)
    torch.testing.assert_close(got, reference.softmax(-1))


def test_the_replace_runs_the_host_kernel_with_the_bias_on_positive_rows_only():
    editor = CrossAttentionModulation(ModulationSettings(noun_weight=2.0, mask_until=0.5), [[2], [5]], [2, 5], [])
    g = torch.Generator().manual_seed(3)
    q, kv = torch.randn(2, 16, 8, generator=g), torch.randn(2, 10, 8, generator=g)
    masks = []

    def masked_kernel(q_, k_, v_, heads, mask=None, **kw):
        masks.append(mask)
        return probs_times_v((attention_scores(q_, k_, heads) + mask).softmax(-1), v_)

    opts, c = call(0)                                   # cond_or_uncond = [1, 0]: row 1 is positive
    out = CrossAttentionReplace(masked_kernel)(q, kv, kv, with_editor(opts, editor))
    bias = masks[0]
    assert bias.shape == (2, 2, 16, 10) and torch.all(bias[0] == 0)
    assert torch.isinf(bias[1]).any() and bias[1].isfinite().any()
    expected = torch.zeros(10)
    expected[[2, 5]] = math.log(2.0)
    finite = bias[1].isfinite()
    torch.testing.assert_close(bias[1][finite], expected.expand(2, 16, 10)[finite])
    assert out.shape == (2, 16, 8)


def test_weight_zero_removes_the_columns_and_the_rest_renormalises():
    """The node allows weight 0: those tokens get no attention (not a math domain error), exactly like dropping
    their columns from the softmax."""
    scores = torch.randn(4, 10, generator=torch.Generator().manual_seed(4))
    after = reweight(scores, [2, 3], 0.0).softmax(-1)
    assert torch.all(after[:, [2, 3]] == 0)
    keep = [0, 1, 4, 5, 6, 7, 8, 9]
    torch.testing.assert_close(after[:, keep], scores[:, keep].softmax(-1))
    editor = CrossAttentionModulation(ModulationSettings(noun_weight=0.0, attribute_weight=0.0), [[2, 3]], [3], [2])
    g = torch.Generator().manual_seed(5)
    q, kv = torch.randn(2, 16, 8, generator=g), torch.randn(2, 10, 8, generator=g)
    opts, c = call(0)

    def masked_kernel(q_, k_, v_, heads, mask=None, **kw):
        return probs_times_v((attention_scores(q_, k_, heads) + mask).softmax(-1), v_)

    out = CrossAttentionReplace(masked_kernel)(q, kv, kv, with_editor(opts, editor))
    assert out.isfinite().all()
    probs = (attention_scores(q, kv, 2) + editor.bias(q, kv, 2, c)).softmax(-1)
    assert torch.all(probs[1, :, :, 3] == 0) and probs[1].isfinite().all()          # positive rows: noun gone
    torch.testing.assert_close(probs[0], attention_probs(q, kv, 2)[0])                # negative rows untouched


@pytest.mark.parametrize("field, value", [("noun_weight", -0.5), ("attribute_weight", float("nan")),
                                          ("temperature", 0.0), ("switch", 1.5), ("mask_until", -0.1)])
def test_settings_outside_their_range_name_the_input(field, value):
    with pytest.raises(ValueError, match=f"^{field}: "):
        ModulationSettings(**{field: value})
