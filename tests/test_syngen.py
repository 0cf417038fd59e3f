"""SynGen's loss against a transliteration of the official functions (torch.distributions), and gradients."""
import itertools

import pytest
import torch
import torch.distributions as dist
from attention_align.guidance.syngen import symmetric_kl, syngen_guidance, syngen_loss


def official_kl(a, b):
    p, q = dist.Categorical(probs=a.reshape(-1)), dist.Categorical(probs=b.reshape(-1))
    return (dist.kl_divergence(p, q) + dist.kl_divergence(q, p)) / 2


def official_loss(maps, subtrees, idx_to_wp):
    """compute_loss.py + _attribution_loss, with subtree elements as int or list (multi-wordpiece)."""
    def flatten(items):
        out = []
        for it in items:
            out.extend(it) if isinstance(it, list) else out.append(it)
        return out

    def positive(mod, noun):
        mods = mod if isinstance(mod, list) else [mod]
        nouns = noun if isinstance(noun, list) else [noun]
        return max(official_kl(maps[s], maps[d]) for s, d in itertools.product(mods, nouns))

    def outside_loss(src, outside):
        vals = []
        for u in outside:
            srcs = src if isinstance(src, list) else [src]
            vals.append(max(official_kl(maps[t], maps[u]) for t in srcs))
        return vals

    def negative(mod, noun, subtree):
        outside = [i for i in idx_to_wp if i not in flatten(subtree)]
        neg_noun = -sum(outside_loss(noun, outside)) / len(outside) if outside else 0
        if mod:
            neg_mod = -sum(outside_loss(mod, outside)) / len(outside) if outside else 0
            return (neg_mod + neg_noun) / 2
        return neg_noun

    loss = 0
    for subtree in subtrees:
        noun, modifiers = [subtree[-1]], subtree[:-1]
        if not modifiers:
            loss += negative([], noun[0], subtree)
            continue
        for n, m in itertools.product(noun, modifiers):
            loss += positive(m, n) + negative(m, n, subtree)
    return loss


def as_group(subtree):
    return [tuple(w) if isinstance(w, list) else (w,) for w in subtree]


@pytest.mark.parametrize("subtrees", [
    [[2, 3], [6, 7]],                  # "a red car and a blue bench"
    [[2, [3, 4]]],                      # a multi-wordpiece noun
    [[[2, 3], 5, 6]],                   # a multi-wordpiece modifier and two modifiers
    [[2, 4, 5], [7]],                   # a merged group and a noun-only group
])
def test_loss_matches_the_official_functions(subtrees):
    g = torch.Generator().manual_seed(len(str(subtrees)))
    maps = torch.rand(2, 12, 4, 4, generator=g, dtype=torch.float64) + 0.01
    idx_to_wp = list(range(1, 9))                       # prompt tokens 1..8 (eos at 9)
    got = syngen_loss(maps, [as_group(s) for s in subtrees], idx_to_wp)
    for b in range(2):
        want = official_loss(maps[b] * 100, subtrees, idx_to_wp)
        assert got[b].item() == pytest.approx(float(want), abs=1e-9)


def test_symmetric_kl_is_symmetric_zero_on_the_diagonal_and_matches_torch():
    maps = torch.rand(1, 4, 3, 3, dtype=torch.float64)
    d = symmetric_kl(maps)[0]
    torch.testing.assert_close(d, d.T)
    assert torch.all(d.diagonal().abs() < 1e-12)
    assert d[0, 2].item() == pytest.approx(official_kl(maps[0, 0], maps[0, 2]).item(), abs=1e-12)


def test_float32_matches_float64_to_the_official_precision():
    """Similar maps (distances ≈ 0.1, as for a bound modifier and noun; 16×16): float32 within 1e-7 of float64
    (the expanded form Σp·log p − p·(log q)ᵀ is off by 9.5e-7 here, on the diagonal too), the diagonal exactly 0,
    and the loss within 1e-5 relative."""
    g = torch.Generator().manual_seed(0)
    maps64 = (torch.randn(2, 10, 16, 16, generator=g, dtype=torch.float64) * 0.3).softmax(dim=1)
    d64 = symmetric_kl(maps64)
    d32 = symmetric_kl(maps64.float())
    assert (d32.double() - d64).abs().max().item() < 1e-7
    assert torch.all(d32.diagonal(dim1=1, dim2=2) == 0)
    probs = maps64.flatten(-2) / maps64.flatten(-2).sum(-1, keepdim=True)
    for i, j in [(1, 4), (7, 2)]:                          # by hand, per pair, in float64
        kl = lambda p, q: (p * (p.log() - q.log())).sum()  # noqa: E731
        want = 0.5 * (kl(probs[0, i], probs[0, j]) + kl(probs[0, j], probs[0, i]))
        assert d64[0, i, j].item() == pytest.approx(want.item(), rel=1e-12)
    groups = [[(2,), (3,)], [(5,), (6, 7)]]
    l64 = syngen_loss(maps64, groups, list(range(1, 9)))
    l32 = syngen_loss(maps64.float(), groups, list(range(1, 9)))
    torch.testing.assert_close(l32.double(), l64, rtol=1e-5, atol=0)


def test_gradients_pass_gradcheck():
    maps = (torch.rand(1, 7, 3, 3, dtype=torch.float64) + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: syngen_loss(m, [[(2,), (3, 4)]], list(range(1, 6))), (maps,))


def test_official_configuration_and_empty_groups():
    plan = syngen_guidance([[(2,), (3,)]], eos_index=5).plan(50)
    assert plan.guided == frozenset(range(25)) and set(plan.alphas.values()) == {20.0} and plan.refinement is None
    with pytest.raises(ValueError, match="groups: SynGen needs at least one group"):
        syngen_guidance([], eos_index=5)
