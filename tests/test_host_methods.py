"""Attend-and-Excite and SynGen in a real ComfyUI; token selection on the CLIP vocabulary ComfyUI ships."""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from conftest import guide


def text_attention(host, ckpt, text):
    out = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
                    "t": {"class_type": "AttentionAlignTextSelfAttention",
                          "inputs": {"clip": ["c", 1], "text": text, "encoder": "auto", "gamma": 3.0}}})
    return out["t"]


def labelled(ta):
    return [(w.label, w.positions) for w in ta.words]


@pytest.mark.parametrize("text, expected", [
    ("a checkered bowl", [("a", (1,)), ("checkered", (2, 3)), ("bowl", (4,))]),
    ("a dog and a dog", [("a", (1,)), ("dog", (2,)), ("and", (3,)), ("a#2", (4,)), ("dog#2", (5,))]),
    ("a (red:1.2) car and a ((blue)) bench", [("a", (1,)), ("red", (2,)), ("car", (3,)), ("and", (4,)),
                                               ("a#2", (5,)), ("blue", (6,)), ("bench", (7,))]),
    ("a \\(red\\) car", [("a", (1,)), ("(", (2,)), ("red", (3,)), (")", (4,)), ("car", (5,))]),
    ("a photorealistic hippopotamus", [("a", (1,)), ("photorealistic", (2, 3)), ("hippopotamus", (4, 5, 6))]),
])
def test_words_map_to_tokens_of_the_real_vocabulary(host, tiny_ckpt, text, expected):
    ta = text_attention(host, tiny_ckpt, text)[0]
    got = labelled(ta)
    if text == "a photorealistic hippopotamus":       # the exact BPE split is the vocabulary's business
        assert [label for label, _ in got] == [label for label, _ in expected]
        assert [len(p) for _, p in got][1:] != [1, 1] and got[-1][1][-1] == ta.eos_index - 1
    else:
        assert got == expected
    assert "".join(p.replace("</w>", "") for p in ta.prompt_pieces) == "".join(w.text for w in ta.words)


def test_weights_change_the_conditioning_not_the_tokens(host, tiny_ckpt):
    weighted = text_attention(host, tiny_ckpt, "a (red:1.5) car")
    plain = text_attention(host, tiny_ckpt, "a red car")
    assert weighted[0].pieces == plain[0].pieces
    torch.testing.assert_close(weighted[0].probs, plain[0].probs)   # weights act after the encoder's attention
    assert not torch.equal(weighted[2][0][0], plain[2][0][0])


def test_embeddings_are_words_named_after_the_embedding(host, tiny_ckpt):
    folder = host.base_dir / "models" / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({"emb_params": torch.randn(2, 768, generator=torch.Generator().manual_seed(0))},
                                str(folder / "tiny_style.safetensors"))
    ta = text_attention(host, tiny_ckpt, "a photo of embedding:tiny_style cat")[0]
    assert labelled(ta) == [("a", (1,)), ("photo", (2,)), ("of", (3,)), ("embedding:tiny_style", (4, 5)),
                            ("cat", (6,))]
    assert ta.token_ids[4] is None and ta.token_ids[5] is None


@pytest.fixture(scope="module")
def env(host, tiny_ckpt):
    out = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}}})
    model, clip = out["c"][:2]
    return SimpleNamespace(model=model, clip=clip, neg=clip.encode_from_tokens_scheduled(clip.tokenize("")),
                           G=host.pack_module("nodes.host.guided"))


def run_method(host, tiny_ckpt, env, prompt, node, inputs, steps=5, size=128, batch=1):
    import nodes as comfy_nodes

    ta, _, pos = text_attention(host, tiny_ckpt, prompt)
    guidance, tokens = host.node_class(node).execute(ta, **inputs).args
    m, log = guide(env.G, env.model, guidance, verify=True)
    comfy_nodes.common_ksampler(m, 11, steps, 7.5, "euler", "normal", pos, env.neg,
                                {"samples": torch.zeros(batch, 4, size // 8, size // 8)})
    return guidance, tokens, log


AE = dict(parser="builtin", softmax="official", strength=1.0, scale_factor=20.0, guided_steps=25,
          max_refinement_steps=20, level=32)


def test_attend_and_excite_raises_the_weakest_subject_and_refines_to_threshold_or_max(host, tiny_ckpt, env):
    guidance, tokens, log = run_method(host, tiny_ckpt, env, "a cat and a frog", "AttentionAlignAttendExcite",
                                       dict(AE, subjects="cat, frog"), batch=2)
    assert tokens == "subjects: cat[2], frog[5]; softmax over every token after bos, padding included (official)"
    assert guidance.objective.subjects == [(2,), (5,)]
    for rec in log.steps:
        assert torch.all(rec.loss_after <= rec.loss_before) and torch.any(rec.loss_after < rec.loss_before)
    first = log.steps[0]
    assert first.iterations is not None                    # step 0 refines (threshold 0.05 → loss target 0.95)
    target = 0.95
    for b in range(2):
        n = int(first.iterations[b])
        decided = first.losses[max(n - 1, 0)][b]           # the loss the official loop decided to stop on
        assert n == 20 or decided <= target                # stopped at the threshold or at the maximum
    assert max(len(r.losses) for r in log.steps) <= 21


def test_attend_and_excite_softmax_modes_differ(host, tiny_ckpt, env):
    official = run_method(host, tiny_ckpt, env, "a cat and a frog", "AttentionAlignAttendExcite",
                          dict(AE, subjects="cat", max_refinement_steps=0), steps=3)[2]
    eot = run_method(host, tiny_ckpt, env, "a cat and a frog", "AttentionAlignAttendExcite",
                     dict(AE, subjects="cat", softmax="normalize_eot", max_refinement_steps=0), steps=3)[2]
    assert eot.steps[0].loss_before < official.steps[0].loss_before   # fewer tokens share the softmax
    guidance, tokens, auto = run_method(host, tiny_ckpt, env, "a cat and a frog", "AttentionAlignAttendExcite",
                                        dict(AE, subjects="cat", softmax="auto", max_refinement_steps=0), steps=3)
    assert not guidance.objective.normalize_eot and tokens.endswith("(official)")  # CLIP-L: the official SD1 rule
    assert torch.equal(auto.steps[0].loss_before, official.steps[0].loss_before)


def test_syngen_binds_modifiers_and_its_loss_falls(host, tiny_ckpt, env):
    guidance, tokens, log = run_method(host, tiny_ckpt, env, "a checkered bowl on a red and blue table",
                                       "AttentionAlignSynGen", dict(groups="", parser="builtin", strength=1.0,
                                                                    scale_factor=20.0, guided_steps=25, level=32))
    assert tokens == "groups (builtin): checkered[2,3] bowl[4]; red[7] blue[9] table[10]"
    assert guidance.objective.groups == [[(2, 3), (4,)], [(7,), (9,), (10,)]]
    assert len(log.steps) == 3 and all(r.iterations is None for r in log.steps)   # 25 of 50 → 2.5 → 3; no refinement
    for rec in log.steps:
        assert torch.all(rec.loss_after < rec.loss_before)


def test_show_tokens_and_unknown_words(host, tiny_ckpt):
    from headless import ExecutionFailed

    graph = {"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}},
             "t": {"class_type": "AttentionAlignTextSelfAttention",
                   "inputs": {"clip": ["c", 1], "text": "a red car and a red bench", "encoder": "auto",
                              "gamma": 3.0}},
             "s": {"class_type": "AttentionAlignShowTokens",
                   "inputs": {"text_attention": ["t", 0], "subjects": "", "groups": "red#2 bench",
                              "parser": "builtin"}}}
    text = host.run(graph)["s"][0]
    assert text.splitlines() == [
        "tokens: 0:<|startoftext|> 1:a 2:red 3:car 4:and 5:a 6:red 7:bench 8:<|endoftext|>",
        "subjects (builtin): car[3], bench[7]",
        "groups: red#2[6] bench[7]"]
    assert host.ui_outputs["s"]["text"] == [text]
    graph["s"]["inputs"]["groups"] = "green bench"
    with pytest.raises(ExecutionFailed, match="groups: 'green' is not a word of the prompt. The prompt's words are: "
                                              "a, red, car, and, a#2, red#2, bench"):
        host.run(graph)


@pytest.mark.skipif(importlib.util.find_spec("spacy") is not None, reason="spaCy is installed here")
def test_asking_for_spacy_without_it_is_a_clear_error(host, tiny_ckpt):
    ta = text_attention(host, tiny_ckpt, "a red car")[0]
    with pytest.raises(ValueError, match="parser: 'spacy' needs spaCy and an English pipeline"):
        host.node_class("AttentionAlignSynGen").execute(ta, "", "spacy", 1.0, 20.0, 25, 32)
