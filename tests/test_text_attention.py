"""Text self-attention probabilities and T-SAM's target T̂, against naive loops."""
import math

import pytest
import torch
from attention_align.guidance.text_attention import TextAttention, text_attention_from_scores, tsam_target


def naive_attention(q, k, mask, heads):
    b, t, inner = q.shape
    d = inner // heads
    out = torch.zeros(b, heads, t, t, dtype=torch.float64)
    for bi in range(b):
        for h in range(heads):
            for i in range(t):
                scores = []
                for j in range(t):
                    s = sum(float(q[bi, i, h * d + c]) * float(k[bi, j, h * d + c]) for c in range(d)) / math.sqrt(d)
                    scores.append(s + float(mask[i, j]))
                m = max(scores)
                e = [math.exp(s - m) for s in scores]
                for j in range(t):
                    out[bi, h, i, j] = e[j] / sum(e)
    return out


def test_probabilities_match_naive_softmax_with_causal_mask():
    torch.manual_seed(0)
    q, k = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    mask = torch.full((5, 5), -torch.finfo(torch.float32).max).triu(1)
    got = text_attention_from_scores(q, k, mask, heads=2)
    assert got.shape == (2, 2, 5, 5)
    torch.testing.assert_close(got.double(), naive_attention(q, k, mask, 2), rtol=1e-5, atol=1e-6)
    assert torch.all(got.triu(1) == 0)


def naive_target(m, eos, gamma):
    L = eos - 1
    out = torch.zeros(L, L, dtype=torch.float64)
    for i in range(L):
        row = [float(m[i + 1, j + 1]) ** gamma for j in range(L)]
        total = sum(row) + 1e-7
        for j in range(L):
            out[i, j] = row[j] / total
    return out


@pytest.mark.parametrize("eos, gamma", [(3, 3.0), (7, 3.0), (10, 1.5)])
def test_target_matches_naive_slice_power_renormalise(eos, gamma):
    torch.manual_seed(eos)
    m = torch.rand(12, 12).tril()
    m = m / m.sum(-1, keepdim=True)
    got = tsam_target(m, eos, gamma=gamma)
    assert got.shape == (eos - 1, eos - 1)
    torch.testing.assert_close(got.double(), naive_target(m, eos, gamma), rtol=1e-5, atol=1e-7)


def test_target_of_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="no tokens"):
        tsam_target(torch.eye(4), 1)


def test_text_attention_record_averages_heads_and_layers():
    torch.manual_seed(1)
    probs = torch.rand(3, 4, 6, 6).tril()
    probs = probs / probs.sum(-1, keepdim=True)
    pieces = ["<|startoftext|>", "a</w>", "red</w>", "cube</w>", "<|endoftext|>", "<|endoftext|>"]
    ta = TextAttention("clip_l", "a red cube", probs, pieces, [49406, 320, 736, 11353, 49407, 49407], gamma=2.0)
    assert ta.eos_index == 4 and ta.num_prompt_tokens == 3
    assert [w.label for w in ta.words] == ["a", "red", "cube"]
    manual = sum(probs[l, h] for l in range(3) for h in range(4)) / 12
    torch.testing.assert_close(ta.mean_attention(), manual)
    torch.testing.assert_close(ta.target(), tsam_target(manual, 4, gamma=2.0))
