"""Attend-and-Excite's loss against a naive per-pixel implementation; configuration; gradients."""
import math

import pytest
import torch
from attention_align.guidance.attend_excite import attend_excite_guidance, attend_excite_loss, subject_maxima

TAPS = [0.2119415576170854, 0.5761168847658291, 0.2119415576170854]


def naive_maxima(maps, subjects, eos, normalize_eot):
    """Official layout (h, w, T), softmax(100·A[..., 1:last]) pixel by pixel, reflect-padded 3×3 smoothing."""
    t, h, w = maps.shape
    last = eos if normalize_eot else t - 1
    soft = [[None] * w for _ in range(h)]
    for y in range(h):
        for x in range(w):
            logits = [100.0 * float(maps[k, y, x]) for k in range(1, last)]
            m = max(logits)
            e = [math.exp(v - m) for v in logits]
            soft[y][x] = [v / sum(e) for v in e]
    reflect = lambda i, n: -i if i < 0 else (2 * (n - 1) - i if i >= n else i)  # noqa: E731
    out = []
    for positions in subjects:
        best = -1.0
        for p in positions:
            for y in range(h):
                for x in range(w):
                    v = sum(TAPS[dy + 1] * TAPS[dx + 1] * soft[reflect(y + dy, h)][reflect(x + dx, w)][p - 1]
                            for dy in (-1, 0, 1) for dx in (-1, 0, 1))
                    best = max(best, v)
        out.append(best)
    return out


@pytest.mark.parametrize("normalize_eot", [False, True])
def test_maxima_and_loss_match_naive(normalize_eot):
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(2, 12, 4, 5, generator=g, dtype=torch.float64).softmax(1) * 3
    subjects, eos = [(2,), (4, 5)], 7
    got = subject_maxima(maps, subjects, eos, normalize_eot)
    loss = attend_excite_loss(maps, subjects, eos, normalize_eot)
    for b in range(2):
        want = naive_maxima(maps[b], subjects, eos, normalize_eot)
        assert got[b].tolist() == pytest.approx(want, abs=1e-9)
        assert loss[b].item() == pytest.approx(max(max(0.0, 1 - v) for v in want), abs=1e-9)


def test_eos_and_padding_take_mass_only_in_the_official_mode():
    maps = torch.zeros(1, 10, 3, 3, dtype=torch.float64)
    maps[:, 2] = 0.05                                   # subject slightly above everything else
    official = subject_maxima(maps, [(2,)], eos_index=4, normalize_eot=False)
    eot = subject_maxima(maps, [(2,)], eos_index=4, normalize_eot=True)
    assert eot > official                               # fewer columns share the softmax


def test_gradients_pass_gradcheck():
    g = torch.Generator().manual_seed(2)
    maps = (torch.rand(1, 8, 3, 3, generator=g, dtype=torch.float64) * 0.02).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: subject_maxima(m, [(2,), (3, 4)], 6), (maps,))


def test_subjects_outside_the_prompt_are_refused():
    with pytest.raises(ValueError, match="outside the prompt"):
        subject_maxima(torch.rand(1, 10, 3, 3), [(9,)], eos_index=5, normalize_eot=True)


def test_official_configuration():
    plan = attend_excite_guidance([(2,)], eos_index=5).plan(50)
    assert plan.guided == frozenset(range(25))
    assert plan.alphas[0] == pytest.approx(20.0) and plan.alphas[24] == pytest.approx(20 * math.sqrt(1 - 0.5 * 24 / 50))
    r = plan.refinement
    assert r.thresholds == ((0, 0.95), (10, 0.5), (20, pytest.approx(0.2)))
    assert r.max_iters == 20 and r.stop_below and r.enter_above and r.give_up_at is None
