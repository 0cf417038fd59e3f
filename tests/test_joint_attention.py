"""DiT joint attention (pure torch) and T5 SentencePiece words, without the host."""
from __future__ import annotations

import pytest
import torch
from attention_align.guidance.attention import AttentionEdit
from attention_align.guidance.joint_attention import JointLayout, image_text_probs
from attention_align.guidance.text_attention import TextAttention
from attention_align.guidance.tokens import group_sp_words
from attention_align.nodes.host.routers import JointAttentionTap


def test_image_text_probs_are_the_joint_softmax_block_renormalised():
    torch.manual_seed(0)
    layout = JointLayout(5, (2, 3))
    q, k = torch.randn(2, 3, 5 + 6 + 2, 8), torch.randn(2, 3, 5 + 6 + 2, 8)      # 2 extra tokens after the image
    p = image_text_probs(q, k, layout)
    joint = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1)                  # the whole joint attention
    block = joint[:, :, 5:11, :5]                                             # image queries × text keys
    assert p.shape == (2, 3, 6, 5)
    torch.testing.assert_close(p, block / block.sum(-1, keepdim=True))
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, 6))


def test_image_text_probs_apply_the_calls_mask():
    torch.manual_seed(1)
    layout = JointLayout(4, (2, 2))
    q, k = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 3] = -torch.inf                                                 # text token 3 masked out
    p = image_text_probs(q, k, layout, mask=mask)
    assert torch.all(p[..., 3] == 0)
    torch.testing.assert_close(p[..., :3], (q[..., 4:, :] @ k[..., :3, :].transpose(-1, -2) / 2).softmax(-1))
    row = mask[:, :, :1]                                                      # one row for every query
    torch.testing.assert_close(image_text_probs(q, k, layout, mask=row), p)


def test_image_text_probs_refuse_a_sequence_too_short():
    with pytest.raises(ValueError, match="cannot hold 5 text tokens and a 2×3"):
        image_text_probs(torch.zeros(1, 1, 10, 4), torch.zeros(1, 1, 10, 4), JointLayout(5, (2, 3)))


def test_tap_observes_the_joint_call_only_and_chains_the_previous_override():
    layout = JointLayout(3, (2, 2))
    seen, chained = [], []

    def previous(func, *args, **kwargs):
        chained.append(args[0].shape)
        return func(*args, **kwargs)

    tap = JointAttentionTap(layout, seen.append, previous=previous)
    kernel = lambda q, k, v, heads, **kw: v * 2                               # noqa: E731  stands in for the host's
    q = torch.randn(1, 7, 2 * 4)                                              # MMDiT layout [b, L, heads·d]
    out = tap(kernel, q, q, q, heads=2, transformer_options={})
    assert torch.equal(out, q * 2) and len(seen) == 1 and seen[0].shape == (1, 2, 4, 3)
    tap(kernel, q[:, 3:], q[:, 3:], q[:, 3:], heads=2)                        # image-only self-attention (SD3.5-M)
    assert len(seen) == 1 and len(chained) == 2                               # not observed, still computed
    tap(kernel, q, q, q, heads=2)                                             # the block recomputed (checkpointing)
    assert len(seen) == 1 and len(chained) == 3


def test_sentencepiece_words_and_positions():
    """A bare ▁ starts the word after it but is not one of its positions (gsn-factory leaves it out too): "a" is
    position 78, not 77–78, "2" is 86, and T5's "giraffe" (▁ gir af fe) is its three meaningful pieces."""
    pieces = ["▁", "a", "▁red", "▁car", ",", "▁x", "-", "ray", "▁", "2", "▁dog", "s", "▁car", "▁", "gir", "af", "fe",
              "▁", "(", "</s>", "<pad>"]
    words = group_sp_words(pieces, 19, offset=77)
    assert [(w.label, w.positions) for w in words] == [
        ("a", (78,)), ("red", (79,)), ("car", (80,)), (",", (81,)), ("x", (82,)), ("-", (83,)), ("ray", (84,)),
        ("2", (86,)), ("dogs", (87, 88)), ("car#2", (89,)), ("giraffe", (91, 92, 93)), ("(", (95,))]


def test_t5_text_attention_starts_at_zero_and_sits_at_its_offset():
    pieces = ["▁red", "▁car", "</s>", "<pad>", "<pad>"]
    probs = torch.rand(2, 3, 5, 5).softmax(-1)
    ta = TextAttention(encoder="t5xxl", prompt="red car", probs=probs, pieces=pieces, token_ids=[1] * 5, offset=77)
    assert (ta.eos_index, ta.start, ta.num_prompt_tokens, ta.prompt_slice) == (2, 0, 2, slice(77, 79))
    assert ta.prompt_labels == ["red", "car"] and [w.positions for w in ta.words] == [(77,), (78,)]
    t = probs.mean((0, 1))[:2, :2] ** 3
    torch.testing.assert_close(ta.target(), t / (t.sum(-1, keepdim=True) + 1e-7))
    assert ta.target()[0, 1] > 0                                              # bidirectional: not triangular
    bare = TextAttention(encoder="t5xxl", prompt="2", probs=probs[..., :3, :3], pieces=["▁", "2", "</s>"],
                         token_ids=[1] * 3)
    assert bare.prompt_labels == ["_", "2"] and [w.label for w in bare.words] == ["2"]


def test_clip_text_attention_refuses_an_offset():
    pieces = ["<|startoftext|>", "car</w>", "<|endoftext|>"]
    with pytest.raises(ValueError, match="starts the context"):
        TextAttention(encoder="clip_l", prompt="car", probs=torch.rand(1, 1, 3, 3), pieces=pieces,
                      token_ids=[0, 1, 2], offset=77)


def _kernel(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    """ComfyUI's kernel convention: [b, heads, L, d] with skip_reshape, else [b, L, heads·d]; returns [b, L, heads·d]."""
    if not skip_reshape:
        b, n, inner = q.shape
        q, k, v = (t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], -1, out.shape[1] * out.shape[3])


@pytest.mark.parametrize("skip", [True, False], ids=["flux_layout", "mmdit_layout"])
def test_temperature_scales_the_image_to_text_logits_inside_the_joint_softmax(skip):
    """TACA's edit, by hand: the whole score matrix with its image-query × text-key block multiplied by γ, one
    softmax over every key; the tap reaches it with two kernel calls. Observers see the edited P."""
    torch.manual_seed(3)
    layout, gamma, heads, d = JointLayout(4, (2, 3)), 1.7, 2, 8
    q, k, v = (torch.randn(2, heads, 10, d, dtype=torch.float64) for _ in range(3))
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    scores[:, :, 4:, :4] *= gamma
    expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, heads * d)
    seen = []
    tap = JointAttentionTap(layout, seen.append, text_scale=gamma)
    args = (q, k, v) if skip else tuple(t.transpose(1, 2).reshape(2, 10, heads * d) for t in (q, k, v))
    out = tap(_kernel, *args, heads=heads, skip_reshape=skip)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(seen[0], scores[:, :, 4:, :4].softmax(-1))
    untouched = JointAttentionTap(layout, None)(_kernel, *args, heads=heads, skip_reshape=skip)
    plain = (q @ k.transpose(-1, -2) / d ** 0.5).softmax(-1) @ v
    torch.testing.assert_close(untouched, plain.transpose(1, 2).reshape(2, 10, heads * d))


def test_temperature_slices_a_mask_with_rows_and_keeps_a_broadcast_one():
    torch.manual_seed(4)
    layout, heads, d = JointLayout(3, (1, 2)), 1, 4
    q, k, v = (torch.randn(1, heads, 5, d, dtype=torch.float64) for _ in range(3))
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    mask[..., 3:, 1] = -torch.inf                                            # image rows may not see text token 1
    scores = q @ k.transpose(-1, -2) / 2
    scores[..., 3:, :3] *= 2.0
    expected = ((scores + mask).softmax(-1) @ v).transpose(1, 2).reshape(1, 5, d)
    out = JointAttentionTap(layout, None, text_scale=2.0)(_kernel, q, k, v, heads, mask=mask, skip_reshape=True)
    torch.testing.assert_close(out, expected)
    row = torch.zeros(1, 1, 1, 5, dtype=torch.float64)                       # one row for every query
    out = JointAttentionTap(layout, None, text_scale=2.0)(_kernel, q, k, v, heads, mask=row, skip_reshape=True)
    torch.testing.assert_close(out, (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 5, d))


def test_temperature_settings_refuse_bad_values():
    from attention_align.guidance.joint_temperature import JointTemperatureSettings

    with pytest.raises(ValueError, match="gamma: 0 is not allowed; it must be > 0"):
        JointTemperatureSettings(gamma=0)
    with pytest.raises(ValueError, match="until: 1.5 is not a phase"):
        JointTemperatureSettings(until=1.5)
    with pytest.raises(ValueError, match="first_steps: -1 is not allowed; it must be a whole number ≥ 0"):
        JointTemperatureSettings(first_steps=-1)


@pytest.mark.parametrize("total", [20, 30, 50])
def test_temperature_window_by_fraction_or_by_tacas_step_count(total):
    """TACA's released code scales during its first 3 denoising steps whatever the step count; the fraction 0.1
    gives 2 of 20, 3 of 30, 5 of 50 steps. Every evaluation of a step counts, a solver's intermediate σ included."""
    from attention_align.guidance.attention import LayerCall
    from attention_align.guidance.joint_temperature import JointTemperatureSettings

    schedule = torch.linspace(1.0, 0.0, total + 1)

    def scaled(settings, sigma):
        call = LayerCall(block=("double", 0), depth=0, size=(2, 2), latent_size=(4, 4), cond_or_uncond=(0,),
                         sigma=float(sigma), sample_sigmas=schedule, grad_pass=False)
        return settings.for_run().text_scale(call) != 1.0

    steps = [s for s in range(total) if scaled(JointTemperatureSettings(first_steps=3), schedule[s])]
    assert steps == [0, 1, 2]
    assert scaled(JointTemperatureSettings(first_steps=3), (schedule[2] + schedule[3]) / 2)      # inside step 2
    assert not scaled(JointTemperatureSettings(first_steps=3), (schedule[3] + schedule[4]) / 2)  # inside step 3
    by_fraction = [s for s in range(total) if scaled(JointTemperatureSettings(), schedule[s])]
    assert by_fraction == list(range({20: 2, 30: 3, 50: 5}[total]))


class KnownEdit(AttentionEdit):
    """A test editor: adds a fixed bias to the image→text logits of the calls it wants, and scales the image→image
    logits of every call by ``image``."""

    adds_bias = True

    def __init__(self, bias, image, wanted=True):
        self.b, self.image, self.wanted, self.shapes = bias, image, wanted, []

    def wants(self, call):
        return self.wanted

    def bias(self, q, k, heads, call):
        self.shapes.append((tuple(q.shape), tuple(k.shape), heads))
        return self.b

    def image_scale(self, call):
        return self.image


def _flat(t):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


@pytest.mark.parametrize("skip", [True, False], ids=["flux_layout", "mmdit_layout"])
@pytest.mark.parametrize("wanted", [True, False], ids=["logit_edit", "temperature_only"])
def test_an_edit_changes_the_image_rows_inside_the_joint_softmax_and_leaves_the_text_rows(skip, wanted):
    """By hand: the whole score matrix, + the bias on the image-query × text-key block (only when the editor wants
    the call), × the image scale on the image × image block, one softmax over every key; rows of text queries and
    of tokens after the image grid are plain attention. Observers see the edited block renormalised over text."""
    torch.manual_seed(7)
    t, grid, heads, d = 4, (2, 3), 2, 8
    n, length = 6, 4 + 6 + 2
    q, k, v = (torch.randn(2, heads, length, d, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, heads, n, t, dtype=torch.float64)
    editor = KnownEdit(bias, 0.5, wanted)
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    plain = scores.softmax(-1) @ v
    edited = scores.clone()
    if wanted:
        edited[:, :, t:t + n, :t] += bias
    edited[:, :, t:t + n, t:t + n] *= 0.5
    probs = edited.softmax(-1)
    expected = torch.cat([plain[:, :, :t], (probs @ v)[:, :, t:t + n], plain[:, :, t + n:]], dim=2)
    seen = []
    tap = JointAttentionTap(JointLayout(t, grid), seen.append, editors=[editor], call="the call")
    args = (q, k, v) if skip else tuple(_flat(x) for x in (q, k, v))
    out = tap(_kernel, *args, heads=heads, skip_reshape=skip)
    torch.testing.assert_close(out, _flat(expected))
    block = probs[:, :, t:t + n, :t]
    torch.testing.assert_close(seen[0], block / block.sum(-1, keepdim=True))
    assert editor.shapes == ([((2, n, heads * d), (2, t, heads * d), heads)] if wanted else [])
    assert not torch.allclose(out, _flat(plain))


def test_regulation_on_joint_attention_restores_the_end_token_and_keeps_a_first_word_edited():
    """Flux's context has no start token: column 0 is a word (here a target). The image rows get the editor's
    biased image→text logits (the editor itself is checked against the official code elsewhere) inside the joint
    softmax; after it only the end token's joint probability is put back."""
    from attention_align.guidance.attention import LayerCall
    from attention_align.guidance.attn_regulation import RegulationSettings

    torch.manual_seed(8)
    t, grid, heads, d = 6, (4, 4), 2, 8
    length = 6 + 16
    q, k, v = (torch.randn(2, heads, length, d) for _ in range(3))
    schedule = torch.linspace(1.0, 0.0, 11)
    call = LayerCall(block=("double", 0), depth=0, size=grid, latent_size=(8, 8), cond_or_uncond=(1, 0),
                     sigma=float(schedule[0]), sample_sigmas=schedule, grad_pass=False)
    settings = RegulationSettings(targets=(0, 2), eos_index=4, start_token=False, seed=3)
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    twin = settings.for_run()
    text_part = twin.edit_scores(scores[:, :, t:, :t], call)
    probs = torch.cat([text_part, scores[:, :, t:, t:]], dim=-1).softmax(-1)
    unedited = scores[:, :, t:].softmax(-1)
    probs[..., 4] = unedited[..., 4]
    expected = torch.cat([scores[:, :, :t].softmax(-1) @ v, probs @ v], dim=2)
    tap = JointAttentionTap(JointLayout(t, grid), None, editors=[settings.for_run()], call=call)
    out = tap(_kernel, q, k, v, heads, skip_reshape=True)
    torch.testing.assert_close(out, _flat(expected), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(probs[1, ..., 0], unedited[1, ..., 0])            # the first word stays edited
    assert torch.equal(text_part[0], scores[0, :, t:, :t])                      # the negative rows untouched
    assert settings.for_run().keep == [4] and RegulationSettings(targets=(2,), eos_index=7).for_run().keep == [0, 7]
