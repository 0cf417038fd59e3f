"""C (cosine between smoothed token maps, unit diagonal) and T-SAM's row-normalised S, against naive pairs."""
import math

import torch
from attention_align.guidance.similarity import cosine_with_unit_diagonal, tsam_similarity
from attention_align.guidance.smoothing import smooth_maps


def naive_cos(a, b):
    a, b = a.flatten().tolist(), b.flatten().tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_c_matches_naive_pairs_of_smoothed_maps():
    torch.manual_seed(0)
    maps = torch.rand(1, 4, 5, 6, dtype=torch.float64)
    src = smooth_maps(maps)[0]
    for causal in (True, False):
        got = cosine_with_unit_diagonal(maps, causal=causal)[0]
        for i in range(4):
            for j in range(4):
                expected = 1.0 if i == j else 0.0 if (causal and j > i) else naive_cos(src[i], src[j])
                assert abs(got[i, j].item() - expected) < 1e-12


def test_s_is_lower_triangular_row_normalised_cosine():
    torch.manual_seed(1)
    maps = torch.rand(2, 5, 4, 4, dtype=torch.float64)
    s = tsam_similarity(maps)
    assert s.shape == (2, 5, 5)
    assert torch.all(s.triu(1) == 0)
    torch.testing.assert_close(s.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    sm = smooth_maps(maps)
    for b in range(2):
        for i in range(5):
            row = [naive_cos(sm[b, i], sm[b, j]) for j in range(i + 1)]
            for j in range(i + 1):
                assert abs(s[b, i, j].item() - row[j] / sum(row)) < 1e-12
