"""The foundation nodes inside a real ComfyUI on the tiny random-weight SD1.5-family checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch
from clip_reference import clip_reference_attention
from conftest import PROMPT, ROOT
from conftest import capture_graph as graph


def pack_node_ids(host) -> list[str]:
    return sorted(cls.GET_SCHEMA().node_id for cls in host.pack_module("nodes.extension").NODES)


def test_nodes_register_with_descriptions_and_tooltips(host):
    ids = pack_node_ids(host)
    assert {"AttentionAlignTextSelfAttention", "AttentionAlignCaptureCrossAttention", "AttentionAlignVisualize",
            "AttentionAlignTSAM", "AttentionAlignGuidedKSampler", "AttentionAlignApplyGuidance"} <= set(ids)
    registered = sorted(k for k in host.nodes.NODE_CLASS_MAPPINGS if k.startswith("AttentionAlign"))
    assert registered == ids                    # one bad schema would silently drop the rest of the list
    for node_id in ids:
        cls = host.node_class(node_id)
        schema = cls.GET_SCHEMA()
        assert schema.description, node_id
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"


def test_the_registry_describes_each_node_as_its_schema_does(host):
    """What scripts, benchmarks and docs read from the registry (without ComfyUI) agrees with the live schemas:
    each node's id in the extension's order, and each method's name, word input, refinement switch, sweep input,
    fast mode and whether it reads a Text Self-Attention."""
    registry = host.pack_module("nodes.registry")
    classes = host.pack_module("nodes.extension").NODES
    assert [cls.GET_SCHEMA().node_id for cls in classes] == [node.node_id for node in registry.NODES]
    for m in registry.METHODS:
        schema = host.node_class(m.node.node_id).GET_SCHEMA()
        names = {i.id for i in schema.inputs}
        assert schema.display_name == m.display_name, m.key
        assert ("text_attention" in names) == m.text_attention, m.key
        assert ("fast" in names) == m.fast, m.key
        assert m.word_input is None or m.word_input in names, m.key
        assert m.refine_off is None or m.refine_off[0] in names, m.key
        swept = ["noun_weight", "attribute_weight"] if m.sweep == "weights" else [m.sweep] if m.sweep else []
        assert set(swept) <= names, m.key
        assert set(m.example.inputs if m.example else {}) <= names, m.key


def test_pack_loads_from_any_folder_name(tmp_path, comfy_path, host):
    """A user's clone may be called anything (dots and dashes included); relative imports must still work."""
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-Attention-Align.git-main").symlink_to(ROOT, target_is_directory=True)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(comfy_path)!r})
        from comfy.cli_args import args
        args.cpu = True; args.base_directory = {str(base)!r}
        import utils.install_util, utils.extra_config, asyncio, nodes
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        print(sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("AttentionAlign")))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == str(pack_node_ids(host))


def test_text_attention_equals_independent_computation_from_the_weights(host, tiny_ckpt, loaded):
    _, clip, _ = loaded
    out = host.run({"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}},
                    "text": {"class_type": "AttentionAlignTextSelfAttention",
                             "inputs": {"clip": ["ckpt", 1], "text": PROMPT, "encoder": "auto", "gamma": 3.0}}})
    ta, image, conditioning = out["text"]
    ids = [tok for tok, _ in clip.tokenize(PROMPT)["l"][0]]
    sd = safetensors.torch.load_file(str(host.checkpoint_path(tiny_ckpt)))
    ref = clip_reference_attention(sd, "cond_stage_model.transformer.text_model.", ids)
    assert ta.encoder == "clip_l" and ta.probs.shape == (12, 12, 77, 77)
    torch.testing.assert_close(ta.probs, ref, rtol=0, atol=2e-4)
    # the maps are far from uniform, so the comparison above could fail on a wrong layer or head
    assert ref[:, :, 7, :8].max() > 0.5
    # T as T-SAM defines it, from the reference: mean over heads and layers, [1:eos], ^3, rows renormalised
    eos = ids.index(49407)
    t_ref = ref.mean((0, 1))[1:eos, 1:eos] ** 3
    torch.testing.assert_close(ta.target(), t_ref / (t_ref.sum(-1, keepdim=True) + 1e-7), rtol=1e-3, atol=1e-5)
    # tokens decode like the tokenizer itself, and words map to positions
    hf = clip.tokenizer.clip_l.tokenizer.convert_ids_to_tokens(ids)
    assert ta.pieces == hf
    assert [(w.label, w.positions) for w in ta.words] == [
        ("a", (1,)), ("red", (2,)), ("car", (3,)), ("and", (4,)), ("a#2", (5,)), ("blue", (6,)), ("bench", (7,))]
    # the conditioning is what CLIP Text Encode gives
    plain = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    assert torch.equal(conditioning[0][0], plain[0][0])
    assert image.shape[0] == 1 and image.shape[-1] == 3 and 0 <= image.min() and image.max() <= 1


def test_capture_leaves_the_sampled_latent_identical(host, tiny_ckpt):
    plain = host.run(graph(tiny_ckpt, capture=False))["sample"][0]["samples"]
    captured = host.run(graph(tiny_ckpt, capture=True))
    assert torch.equal(captured["sample"][0]["samples"], plain)
    assert not captured["capture"][1].records[-1].empty


def test_captured_maps_have_the_expected_shapes_and_sum_to_one(host, tiny_ckpt):
    out = host.run(graph(tiny_ckpt, batch=2, size=128, steps=3, sampler="euler", record_steps=True))
    rec = out["capture"][1].records[-1]                           # the board's record of that run
    assert rec.latent_size == (16, 16)
    assert rec.levels() == [8, 16, 32]                            # the tiny model's three levels
    assert [rec.size(v) for v in rec.levels()] == [(16, 16), (8, 8), (4, 4)]      # at 128 px
    assert len(rec.layers_seen) == 10
    for level in rec.levels():
        (h, w), maps = rec.size(level), rec.mean(level)
        assert maps.shape == (2, 77, h, w)
        torch.testing.assert_close(maps.sum(1), torch.ones(2, h, w), rtol=0, atol=1e-5)
        assert not torch.allclose(maps[0], maps[1], atol=1e-3)   # each sample has its own maps
    assert [(s.step, s.exact) for s in rec.steps] == [(0, True), (1, True), (2, True)]
    # the per-step maps average to the overall mean (every step saw the same layers)
    mean_of_steps = torch.stack([s.mean(32) for s in rec.steps]).mean(0)
    torch.testing.assert_close(mean_of_steps, rec.mean(32))


def test_levels_select_resolutions_and_unknown_levels_are_refused(host, tiny_ckpt):
    rec = host.run(graph(tiny_ckpt, levels=32, steps=2))["capture"][1].records[-1]
    assert rec.levels() == [32] and rec.size(32) == (4, 4) and len(rec.layers_seen) == 4
    with pytest.raises(Exception, match=r"levels: 64 is not a cross-attention level of this model; use 0 \(all "
                                        r"levels\) or one of 8, 16, 32"):
        host.run(graph(tiny_ckpt, levels=64, steps=2))


def test_visualisation_returns_images_and_labels_of_the_prompt(host, tiny_ckpt):
    out = host.run(graph(tiny_ckpt, batch=2, steps=3))
    grid_img, labels = out["viz"]
    assert grid_img.ndim == 4 and grid_img.shape[0] == 2 and grid_img.shape[-1] == 3
    assert grid_img.dtype == torch.float32 and grid_img.min() >= 0 and grid_img.max() <= 1
    assert labels.splitlines() == ["a", "red", "car", "and", "a#2", "blue", "bench", "T", "S"]
    # 9 tiles of 128×128 in 4 columns with 4 px gaps
    assert grid_img.shape[1:3] == (3 * 128 + 2 * 4, 4 * 128 + 3 * 4)
    # tiles differ between words (each shows its own map) and between batch items
    tile = lambda g, i: g[(i // 4) * 132:(i // 4) * 132 + 128, (i % 4) * 132:(i % 4) * 132 + 128]  # noqa: E731
    assert (tile(grid_img[0], 2) - tile(grid_img[0], 6)).abs().mean() > 0.02
    assert (tile(grid_img[0], 2) - tile(grid_img[1], 2)).abs().mean() > 0.02

    chosen = host.run(graph(tiny_ckpt, batch=2, steps=3, words="bench, car"))["viz"][1]
    assert chosen.splitlines() == ["bench", "car", "T", "S"]


@pytest.mark.parametrize("kwargs, message", [
    ({"words": "dog"}, "words: 'dog' is not a word of the prompt. The prompt's words are: a, red, car, and, a#2, "
                       "blue, bench"),
    ({"prompt": "   "}, "text: the prompt is empty"),
    ({"prompt": " ".join(["red car"] * 40)}, "text: the prompt has 80 tokens, more than fit in one 77-token window"),
    ({"level": 64}, "level: 64 was not recorded; use 0 (every recorded level) or one of 8, 16, 32"),
])
def test_bad_input_is_refused_with_a_clear_message(host, tiny_ckpt, kwargs, message):
    from headless import ExecutionFailed

    with pytest.raises(ExecutionFailed) as err:
        host.run(graph(tiny_ckpt, steps=2, **kwargs))
    assert message in err.value.exception_message


def test_visualising_before_sampling_is_refused(host, loaded):
    model = loaded[0]
    _, board = host.node_class("AttentionAlignCaptureCrossAttention").execute(model, 0, False).args
    ta = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
                   "t": {"class_type": "AttentionAlignTextSelfAttention",
                         "inputs": {"clip": ["c", 1], "text": PROMPT, "encoder": "auto", "gamma": 3.0}}})["t"][0]
    with pytest.raises(ValueError, match="attention_maps: no sampling run of this model has finished yet"):
        host.node_class("AttentionAlignVisualize").execute("", 0, 4, attention_maps=board, text_attention=ta)
    filled = host.run(graph("tiny_sd15.safetensors", steps=2))["capture"][1]
    with pytest.raises(ValueError, match="text_attention: needed with attention_maps"):
        host.node_class("AttentionAlignVisualize").execute("", 0, 4, attention_maps=filled)


def test_text_attention_hooks_are_removed_when_encoding_fails(host, loaded):
    _, clip, _ = loaded
    node = host.node_class("AttentionAlignTextSelfAttention")
    broken = clip.clone()

    def fail(*args, **kwargs):
        raise RuntimeError("encoder exploded")

    broken.encode_from_tokens_scheduled = fail
    with pytest.raises(RuntimeError, match="encoder exploded"):
        node.execute(broken, PROMPT, "auto", 3.0)
    layers = clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers
    assert all(len(layer.self_attn._forward_hooks) == 0 for layer in layers)


def test_capture_wraps_another_packs_replace_instead_of_dropping_it(host, loaded):
    import nodes as comfy_nodes

    model, clip, _ = loaded
    attention = host.pack_module("guidance.attention")
    calls = []

    def foreign(q, k, v, extra):      # another pack's attn2 replace: plain attention, output halved
        calls.append(extra["block"])
        return attention.probs_times_v(attention.attention_probs(q, k, extra["n_heads"]), v) * 0.5

    other = model.clone()
    other.set_model_attn2_replace(foreign, "input", 5)           # the older 2-part key, as some packs use
    pos = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = {"samples": torch.zeros(1, 4, 16, 16)}

    def sample(m):
        return comfy_nodes.common_ksampler(m, 5, 2, 7.0, "euler", "normal", pos, neg, latent)[0]["samples"]

    stock, with_foreign = sample(model), sample(other)
    captured_model, board = host.node_class("AttentionAlignCaptureCrossAttention").execute(other, 0, False).args
    with_both = sample(captured_model)
    assert not torch.equal(stock, with_foreign)
    assert torch.equal(with_both, with_foreign)                   # the foreign replace still ran
    assert ("input", 5, 0) in board.records[-1].layers_seen and calls.count(("input", 5)) >= 4
    assert "patches_replace" not in other.model_options["transformer_options"] or \
        not getattr(other.model_options["transformer_options"]["patches_replace"]["attn2"].get(("input", 5, 0)),
                    "is_attention_align_replace", False)          # the user's model was not touched


