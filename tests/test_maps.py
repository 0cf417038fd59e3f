"""The recorder behind ATTENTION_MAPS, fed with synthetic layer calls."""
import pytest
import torch
from attention_align.guidance.maps import AttentionRecorder, CaptureMaps, step_of
from attention_align.guidance.records import RunInfo, RunStamp
from attention_align.nodes.host.context import PASS_KEY
from attention_align.nodes.host.routers import layer_call

SCHEDULE = torch.tensor([10.0, 5.0, 2.0, 0.0])


def call(block=("input", 1), hw=(4, 4), sigma=10.0, cou=(1, 0), b=2, grad=False):
    opts = {"block": block, "block_index": 0, "original_shape": [b, 4, 8, 8], "activations_shape": [b, 8, *hw],
            "cond_or_uncond": list(cou), "sigmas": torch.full((b,), sigma), "sample_sigmas": SCHEDULE,
            PASS_KEY: {"grad_pass": grad}}
    return layer_call(torch.zeros(b, hw[0] * hw[1], 8), opts)


def probs(b=2, heads=2, n=16, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, heads, n, t, generator=g).softmax(-1)


def to_maps(p, h, w):
    """Independent head mean + reshape: [B, heads, hw, T] → [B, T, h, w]."""
    out = torch.zeros(p.shape[0], p.shape[3], h, w)
    for bi in range(p.shape[0]):
        for t in range(p.shape[3]):
            out[bi, t] = p[bi, :, :, t].mean(0).reshape(h, w)
    return out


def test_running_mean_of_the_positive_rows_per_level():
    rec = AttentionRecorder({("input", 1, 0): 2, ("output", 2, 0): 4})
    p1, p2, p3 = probs(seed=1), probs(seed=2), probs(n=4, seed=3)
    rec.observe(p1, call())
    rec.observe(p2, call(block=("input", 1), sigma=5.0))
    rec.observe(p3, call(block=("output", 2), hw=(2, 2)))
    assert rec.levels() == [2, 4] and rec.latent_size == (8, 8)
    assert rec.size(2) == (4, 4) and rec.size(4) == (2, 2)
    torch.testing.assert_close(rec.mean(2), (to_maps(p1[1:], 4, 4) + to_maps(p2[1:], 4, 4)) / 2)
    torch.testing.assert_close(rec.mean(4), to_maps(p3[1:], 2, 2))
    assert rec.mean(2).shape == (1, 5, 4, 4)
    torch.testing.assert_close(rec.mean(2).sum(1), torch.ones(1, 4, 4))
    with pytest.raises(KeyError, match="recorded: ÷2 \\(4×4\\), ÷4 \\(2×2\\)"):
        rec.mean(1)


def test_levels_come_from_the_layers_not_from_map_sizes():
    """At a tiny latent several levels have 1×1 maps: they stay apart, each under the level its layer has."""
    rec = AttentionRecorder({("input", 4, 0): 2, ("input", 7, 0): 4, ("middle", 0, 0): 8})
    ps = [probs(n=1, seed=s) for s in range(3)]
    for p, block in zip(ps, [("input", 4), ("input", 7), ("middle", 0)]):
        rec.observe(p, call(block=block, hw=(1, 1)))
    assert rec.levels() == [2, 4, 8]
    for level, p in zip([2, 4, 8], ps):
        torch.testing.assert_close(rec.mean(level), to_maps(p[1:], 1, 1))


def test_layers_without_levels_are_refused():
    with pytest.raises(TypeError, match="must map each replace key to its level"):
        AttentionRecorder({("input", 1, 0)})


def test_wants_only_its_layers_sampler_passes_and_positive_chunks():
    rec = AttentionRecorder({("input", 1, 0): 2})
    assert rec.wants(call())
    assert not rec.wants(call(block=("input", 2)))
    assert not rec.wants(call(grad=True))
    assert not rec.wants(call(cou=(1,), b=1))


def test_steps_are_kept_per_sigma_with_schedule_index():
    rec = AttentionRecorder({("input", 1, 0): 2}, keep_steps=True)
    for sigma, seed in [(10.0, 1), (10.0, 2), (7.0, 3), (5.0, 4)]:
        rec.observe(probs(seed=seed), call(sigma=sigma))
    assert [(s.sigma, s.step, s.exact) for s in rec.steps] == [(10.0, 0, True), (7.0, 0, False), (5.0, 1, True)]
    torch.testing.assert_close(rec.steps[0].mean(2),
                               (to_maps(probs(seed=1)[1:], 4, 4) + to_maps(probs(seed=2)[1:], 4, 4)) / 2)


def test_each_run_gets_a_fresh_recorder_and_an_immutable_record():
    method = CaptureMaps(keep_steps=True)
    info = RunInfo(sigmas=SCHEDULE)
    first = method.begin(info, {("input", 1, 0): 2})
    first.observers[0].observe(probs(), call())
    second = method.begin(info, {("input", 1, 0): 2})
    assert second.observers[0] is not first.observers[0]
    assert second.observers[0].empty and second.observers[0].steps == []
    record = first.end(RunStamp("5", "p", 1, "digest"))
    torch.testing.assert_close(record.mean(2), to_maps(probs()[1:], 4, 4))
    assert record.stamp.node_id == "5" and [s.step for s in record.steps] == [0]
    first.observers[0].observe(probs(seed=9), call())                 # the run's recorder goes on …
    torch.testing.assert_close(record.mean(2), to_maps(probs()[1:], 4, 4))   # … the record does not change
    with pytest.raises(TypeError):
        record.means[2] = torch.zeros(1)


def test_step_of():
    assert step_of(5.0, SCHEDULE) == (1, True)
    assert step_of(3.0, SCHEDULE) == (1, False)
    assert step_of(3.0, None) == (None, False)
