"""T-SAM losses against a deliberately naive loop over token pairs (as the released code is written)."""
import math

import pytest
import torch
from attention_align.guidance.tsam import TSAMObjective, tsam_guidance, tsam_loss, tsam_threshold

TAPS = [0.2119415576170854, 0.5761168847658291, 0.2119415576170854]


def naive_smooth(m):
    h, w = len(m), len(m[0])
    reflect = lambda i, n: -i if i < 0 else (2 * (n - 1) - i if i >= n else i)  # noqa: E731
    return [[sum(TAPS[dy + 1] * TAPS[dx + 1] * m[reflect(y + dy, h)][reflect(x + dx, w)]
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)) for x in range(w)] for y in range(h)]


def naive_cos(a, b):
    a = [v for row in a for v in row]
    b = [v for row in b for v in row]
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (max(math.sqrt(sum(x * x for x in a)), 1e-8) * max(math.sqrt(sum(y * y for y in b)), 1e-8))


def naive_cos_vec(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (max(math.sqrt(sum(x * x for x in a)), 1e-8) * max(math.sqrt(sum(y * y for y in b)), 1e-8))


def naive_loss(maps, t, variant, row_weight=1.0):
    """Official structure: smooth each pair's maps, fill a cos matrix starting from the identity, then rows."""
    n = len(maps)
    sm = [naive_smooth(m) for m in maps]
    c = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(i):
            c[i][j] = naive_cos(sm[i], sm[j])
    loss = 0.0
    if variant == "cosine":
        for i in range(1, n):
            loss += 0.2 * i * (1 - naive_cos_vec(t[i][:i], c[i][:i]))
        return loss
    s = [[c[i][j] / sum(c[i]) for j in range(n)] for i in range(n)]
    for i in range(1, n):
        loss += row_weight * (i + 1) / n * sum(abs(t[i][j] - s[i][j]) for j in range(i + 1))
    return loss


def random_target(n, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, n, generator=g, dtype=torch.float64).tril() ** 3
    return t / (t.sum(-1, keepdim=True) + 1e-7)


@pytest.mark.parametrize("variant", ["paper", "cosine"])
@pytest.mark.parametrize("n", [2, 5, 9])
def test_loss_matches_naive_pairs(variant, n):
    g = torch.Generator().manual_seed(n)
    maps = torch.rand(2, n, 5, 4, generator=g, dtype=torch.float64)
    t = random_target(n, n + 1)
    got = tsam_loss(maps, t, variant, row_weight=0.7 if variant == "paper" else 1.0)
    for b in range(2):
        want = naive_loss(maps[b].tolist(), t.tolist(), variant, 0.7 if variant == "paper" else 1.0)
        assert abs(got[b].item() - want) < 1e-6


@pytest.mark.parametrize("variant", ["paper", "cosine"])
def test_gradients_pass_gradcheck(variant):
    g = torch.Generator().manual_seed(0)
    maps = (torch.rand(1, 4, 4, 4, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    t = random_target(4, 3)
    assert torch.autograd.gradcheck(lambda m: tsam_loss(m, t, variant), (maps,))


def test_a_perfect_match_has_zero_paper_loss():
    maps = torch.rand(1, 4, 6, 6, dtype=torch.float64)
    from attention_align.guidance.similarity import cosine_with_unit_diagonal

    c = cosine_with_unit_diagonal(maps)[0]
    s = c / c.sum(-1, keepdim=True)
    assert tsam_loss(maps, s, "paper").item() < 1e-12


def test_threshold_generalises_the_official_dict():
    assert [tsam_threshold(n) for n in (5, 6, 7)] == pytest.approx([0.14 * 4, 0.14 * 5, 0.14 * 6])
    assert tsam_threshold(2) == pytest.approx(0.14)


def test_objective_reads_prompt_tokens_only():
    maps = torch.rand(2, 77, 4, 4)
    t = random_target(3, 1).float()
    obj = TSAMObjective(t, eos_index=4, variant="cosine")
    torch.testing.assert_close(obj.loss(maps), tsam_loss(maps[:, 1:4], t, "cosine"))


def test_one_token_prompt_is_refused():
    with pytest.raises(ValueError, match="text_attention: T-SAM compares pairs of prompt tokens, but 'cat' has 1 "
                                         "token"):
        tsam_guidance(torch.ones(1, 1), eos_index=2, prompt="cat")


def test_released_configuration():
    g = tsam_guidance(random_target(6, 0), eos_index=7)
    plan = g.plan(50)
    assert plan.guided == frozenset(range(30))
    assert [plan.alphas[i] for i in (0, 29)] == pytest.approx([5.0, 5 * math.sqrt(1 - 0.5 * 29 / 50)])
    r = plan.refinement
    assert r.steps == {0, 10, 20} and r.threshold_at(10) == pytest.approx(0.7) and r.max_iters == 30
    assert r.give_up_at == 20 and not r.stop_below
    assert tsam_guidance(random_target(6, 0), eos_index=7, refine="until_threshold").plan(50).refinement.stop_below
    assert tsam_guidance(random_target(6, 0), eos_index=7, refine="off").plan(50).refinement is None


def test_bidirectional_t_compares_whole_rows():
    """With T5's T (bidirectional) every row is compared over every entry, by hand: S = C/rowsum(C) with C's unit
    diagonal and all off-diagonal cosines; paper loss Σ_i row_weight·Σ_j |T̂ − S|; cosine loss Σ_i 0.2·(L−1)·(1 −
    cos(T̂[i, j≠i], C[i, j≠i]))."""
    import torch.nn.functional as F
    from attention_align.guidance.smoothing import smooth_maps
    from attention_align.guidance.tsam import tsam_loss

    torch.manual_seed(5)
    maps = torch.rand(2, 4, 6, 6, dtype=torch.float64)
    target = torch.rand(4, 4, dtype=torch.float64).softmax(-1)
    v = smooth_maps(maps).flatten(-2)
    c = torch.empty(2, 4, 4, dtype=torch.float64)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                c[b, i, j] = 1.0 if i == j else F.cosine_similarity(v[b, i], v[b, j], dim=0)
    s = c / c.sum(-1, keepdim=True)
    paper = 0.5 * (target - s).abs().sum(dim=(-1, -2))
    torch.testing.assert_close(tsam_loss(maps, target, "paper", row_weight=0.5, causal=False), paper)
    off = ~torch.eye(4, dtype=torch.bool)
    cosine = torch.stack([sum(0.2 * 3 * (1 - F.cosine_similarity(target[i][off[i]], c[b, i][off[i]], dim=0))
                               for i in range(4)) for b in range(2)])
    torch.testing.assert_close(tsam_loss(maps, target, "cosine", causal=False), cosine)
    assert not torch.allclose(tsam_loss(maps, target, "paper", causal=True), tsam_loss(maps, target, "paper",
                                                                                        causal=False))
