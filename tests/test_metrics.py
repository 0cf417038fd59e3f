"""Attention metrics of a finished run, against hand computations."""
import pytest
import torch
from attention_align.guidance.attend_excite import attend_excite_loss
from attention_align.guidance.metrics import (
    modifier_noun_overlap,
    noun_separation,
    ts_distance,
    weakest_subject_attention,
)


def maps_of(*grids):
    """[1, T, 2, 2] from per-token 2×2 grids (token 0 = bos, filled with zeros)."""
    return torch.stack([torch.zeros(2, 2)] + [torch.tensor(g, dtype=torch.float64) for g in grids])[None]


def test_overlap_and_separation_are_histogram_intersections():
    m = maps_of([[1, 0], [0, 0]], [[0.5, 0.5], [0, 0]], [[0, 0], [0, 2]], [[2, 0], [0, 0]])
    # token 1 → pixel 0; token 2 → half pixel 0, half pixel 1; token 3 → pixel 3; token 4 = token 1 (scaled)
    assert modifier_noun_overlap(m, [[(1,), (2,)]]).item() == pytest.approx(0.5)
    assert modifier_noun_overlap(m, [[(1,), (4,)]]).item() == pytest.approx(1.0)     # scale does not matter
    assert modifier_noun_overlap(m, [[(1,), (3,)], [(2,), (4,)]]).item() == pytest.approx((0.0 + 0.5) / 2)
    assert noun_separation(m, [(1,), (3,)]).item() == pytest.approx(1.0)
    assert noun_separation(m, [(1,), (2,), (3,)]).item() == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert modifier_noun_overlap(m, [[(2, 3), (1,)]]).item() == pytest.approx(0.5 / 3)     # max over pieces
    with pytest.raises(ValueError, match="groups: .* a modifier"):
        modifier_noun_overlap(m, [[(1,)]])
    with pytest.raises(ValueError, match="nouns: .* at least two"):
        noun_separation(m, [(1,)])


def test_the_weakest_subject_is_one_minus_attend_and_excites_loss():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 9, 4, 4, generator=g).softmax(dim=1)
    subjects = [(2,), (4, 5)]
    weakest = weakest_subject_attention(maps, subjects, eos_index=7)
    torch.testing.assert_close(weakest, 1 - attend_excite_loss(maps, subjects, 7))
    assert weakest.shape == (3,)


def test_ts_distance_is_near_zero_when_the_maps_similarity_follows_t():
    """Three tokens in far-apart corners of a 16×16 map: their (smoothed) maps barely overlap, so S is about the
    identity; T̂ = identity is then near 0 and a T̂ that says the tokens belong together is far."""
    far = torch.zeros(1, 4, 16, 16, dtype=torch.float64)
    far[0, 1, :3, :3] = far[0, 2, -3:, -3:] = far[0, 3, :3, -3:] = 1.0
    near = ts_distance(far, torch.eye(3, dtype=torch.float64), eos_index=4).item()
    together = ts_distance(far, torch.full((3, 3), 1 / 3, dtype=torch.float64).tril(), eos_index=4).item()
    assert near < 1e-3 < 0.5 < together
