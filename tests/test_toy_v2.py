"""Toy model v2's training pieces: the grounding losses against TokenCompose's formulas worked by hand, the padding
swap, the prefix encoding against ComfyUI's own 77-token encoding, the attention capture against the host's kernel,
the colour-swapped negatives, the object-pair split, and resuming a run giving the same bytes."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from toy import grounding as G
from toy import scenes as S


# ------------------------------------------------------------------------------------------------ grounding
def _probs_2x2():
    """One sample, one head, a 2 × 2 map (N = 4), T = 3 tokens; token 1 is the target."""
    p = torch.tensor([[0.5, 0.4, 0.1],       # pixel (0, 0)
                      [0.7, 0.2, 0.1],       # pixel (0, 1)
                      [0.8, 0.1, 0.1],       # pixel (1, 0)
                      [0.9, 0.05, 0.05]])    # pixel (1, 1)
    return p[None, None]                     # [1, 1, 4, 3]


def test_token_loss_is_tokencompose_squared_outside_share_worked_by_hand():
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])           # [B=1, K=1, 2, 2]: the top row
    positions = torch.tensor([[1]])
    inside = (0.4 + 0.2) / (0.4 + 0.2 + 0.1 + 0.05)             # share of token 1's attention on its object
    got = G.token_loss([_probs_2x2()], positions, {2: mask})
    assert got.item() == pytest.approx((1 - inside) ** 2, rel=1e-6)
    # two layers: their mean; an unused slot (−1) counts for nothing
    other = _probs_2x2().flip(2)                                  # the same values, pixels reversed
    inside2 = (0.05 + 0.1) / 0.75
    got2 = G.token_loss([_probs_2x2(), other], torch.tensor([[1, -1]]), {2: torch.cat([mask, mask], 1)})
    assert got2.item() == pytest.approx(((1 - inside) ** 2 + (1 - inside2) ** 2) / 2, rel=1e-6)


def test_pixel_loss_is_bce_of_the_layer_mean_map_worked_by_hand():
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    a = [0.4, 0.2, 0.1, 0.05]
    m = [1.0, 0.0, 0.0, 1.0]
    bce = -sum(mi * math.log(ai) + (1 - mi) * math.log(1 - ai) for ai, mi in zip(a, m)) / 4
    got = G.pixel_loss([_probs_2x2()], torch.tensor([[1]]), {2: mask})
    assert got.item() == pytest.approx(bce, rel=1e-5)
    # heads are averaged before the BCE (not the BCE of each head)
    two_heads = torch.cat([_probs_2x2(), _probs_2x2().flip(2)], dim=1)       # [1, 2, 4, 3]
    mean = [(x + y) / 2 for x, y in zip(a, a[::-1])]
    bce2 = -sum(mi * math.log(ai) + (1 - mi) * math.log(1 - ai) for ai, mi in zip(mean, m)) / 4
    assert G.pixel_loss([two_heads], torch.tensor([[1]]), {2: mask}).item() == pytest.approx(bce2, rel=1e-5)


def test_grounding_losses_pull_a_map_onto_its_object():
    logits = torch.zeros(1, 2, 16, 5, requires_grad=True)
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :2] = 1
    pos = torch.tensor([[2]])
    for loss in (G.token_loss, G.pixel_loss):
        (g,) = torch.autograd.grad(loss([logits.softmax(-1)], pos, {4: mask}), logits)
        inside = g[0, :, mask.reshape(16) > 0, 2]
        outside = g[0, :, mask.reshape(16) == 0, 2]
        assert (inside < 0).all() and (outside > 0).all()          # descent raises token 2 inside, lowers it outside


def test_grounding_losses_refuse_a_map_size_without_masks():
    with pytest.raises(ValueError, match="no target masks for a 16-position map; masks are given for sides \\[8\\]"):
        G.token_loss([torch.rand(1, 1, 16, 3)], torch.tensor([[1]]), {8: torch.zeros(1, 1, 8, 8)})


def test_area_masks_are_the_covered_share_of_each_cell():
    cov = torch.zeros(8, 8)
    cov[0:4, 0:2] = 1.0
    out = G.area_masks(cov, 2)
    assert out.tolist() == [[0.5, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="image side 8 is not a multiple of the map side 3"):
        G.area_masks(cov, 3)


# -------------------------------------------------------------------------------------------------- padding
def test_swap_tails_takes_the_other_captions_tail_aligned_at_its_end_token():
    ctx = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1)   # row 0: 0..5, row 1: 6..11
    out = G.swap_tails(ctx, torch.tensor([2, 4]), torch.tensor([1, 0]))
    # row 0 keeps 0, 1; from its end (2) on it reads row 1 from row 1's end (4): 10, 11, then the last row 11 again
    assert out[0, :, 0].tolist() == [0, 1, 10, 11, 11, 11]
    # row 1 keeps 6..9; from its end (4) on it reads row 0 from row 0's end (2): 2, 3
    assert out[1, :, 0].tolist() == [6, 7, 8, 9, 2, 3]
    assert torch.equal(G.swap_tails(ctx, torch.tensor([2, 4]), torch.tensor([0, 1])), ctx)   # own tail: unchanged


# ----------------------------------------------------------------------------------------- colour negatives
@pytest.mark.parametrize("caption, twin", [
    ("an orange heart and a red star", "a red heart and an orange star"),
    ("a circle that is red next to a blue square", "a circle that is blue next to a red square"),
    ("a red circle, a red star and a cross that is white", "a white circle, a red star and a cross that is red"),
    ("a red circle and a square that is red", None),
    ("a circle and a blue star", None),
])
def test_swap_colours_binds_the_same_words_the_other_way(caption, twin):
    assert G.swap_colours(caption, S.COLOURS) == twin
    if twin:
        content = lambda c: sorted(w for w in c.replace(",", "").split() if w not in ("a", "an"))  # noqa: E731
        assert content(twin) == content(caption)                     # the same words…
        assert S.parse_caption(twin) != S.parse_caption(caption)     # …bound the other way, in the world's grammar


# ---------------------------------------------------------------------------------------------------- split
def test_split_v2_holds_out_a_quarter_of_object_pairs_and_training_never_shows_one():
    all_pairs = {frozenset({(ca, sa), (cb, sb)}) for sa, sb in itertools.combinations(S.SHAPES, 2)
                 for ca in S.COLOURS for cb in S.COLOURS}
    held = S.SPLIT_V2.object_pairs
    assert len(all_pairs) == 735 and held <= all_pairs and len(held) == 184
    assert not S.SPLIT_V2.colour_shapes and not S.SPLIT_V2.shape_pairs
    from toy.train_v2 import SCENES_V2

    alone = set()
    for i in range(1500):
        objs = S.training_sample(i, seed=3, config=SCENES_V2).scene.objects
        for a, b in itertools.combinations(objs, 2):
            assert frozenset({(a.colour, a.shape), (b.colour, b.shape)}) not in held, i
        if len(objs) == 1:
            alone.add((objs[0].colour, objs[0].shape))
    assert alone == set(itertools.product(S.COLOURS, S.SHAPES))    # every colour–shape pair is drawn alone


def test_v2_evaluation_and_tuning_prompts_are_unseen_and_apart():
    ev = S.evaluation_prompts(split=S.SPLIT_V2)
    tune = S.tuning_prompts(n_two=40, n_three=20, split=S.SPLIT_V2)
    assert [len(p.mentions) for p in ev].count(2) == 100 and [len(p.mentions) for p in ev].count(3) == 50
    held = S.SPLIT_V2.object_pairs
    for p in ev + tune:
        pairs = {frozenset({(a.colour, a.shape), (b.colour, b.shape)}) for a, b in itertools.combinations(p.mentions, 2)}
        assert pairs & held and p.kind == "object-pair"
    combos = lambda ps: {frozenset((m.colour, m.shape) for m in p.mentions) for p in ps}  # noqa: E731
    assert not combos(ev) & combos(tune) and len(combos(ev)) == 150 and len(combos(tune)) == 60


def test_v1_split_prompts_are_unchanged_by_the_object_pairs():
    # the first held-out prompts of v1's split, as the shipped benchmark files list them
    assert [p.caption for p in S.evaluation_prompts(n_two=2, n_three=1)][0] == "a blue cross next to a white circle"


# ------------------------------------------------------------------------------------------- with the host
@pytest.fixture(scope="module")
def comfy_ready(host):
    return host


def test_encode_prefix_equals_comfyuis_77_token_encoding(comfy_ready):
    from toy import model as tm

    text = tm.build_text_encoder(tm.toy_config(), dtype=torch.float32)
    tm.init_weights_(text, seed=5)
    # the embeddings are random at init, so a freshly built encoder is a fair test of the arithmetic
    tok = tm.tokenizer()
    ids = [tm.token_ids(tok, c) for c in ("a red circle and a blue square", "a star")]
    with torch.no_grad():
        full, _ = text.clip_l(ids)                                                   # [2, 77, 128]
        prefix = G.encode_prefix(text.clip_l.transformer.text_model, torch.tensor(ids)[:, :24])
    assert full.shape == (2, 77, 128)
    torch.testing.assert_close(prefix, full[:, :24].float(), rtol=1e-5, atol=1e-5)


def test_attention_capture_gives_the_hosts_output_and_its_probabilities(comfy_ready):
    from toy import model as tm

    cfg = tm.toy_config()
    unet = tm.build_unet(cfg, dtype=torch.float32)
    tm.init_weights_(unet, seed=1)
    for p in unet.parameters():                   # the zero-initialised outputs would hide any difference
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 900.0]), torch.randn(2, 77, 128)
    with torch.no_grad():
        ref = unet(x, timesteps=t, context=ctx)
        store = G.capture_cross_attention_(unet)
        got = unet(x, timesteps=t, context=ctx)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert sorted(tuple(p.shape) for p in store) == [(2, 2, 256, 77)] * 3 + [(2, 4, 64, 77)] * 4
    for p in store:
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
    from comfy.ldm.modules.attention import CrossAttention

    fresh = tm.build_unet(cfg, dtype=torch.float32)       # the class and other instances keep the host's forward
    assert all("forward" not in m.__dict__ for n, m in fresh.named_modules() if n.endswith("attn2"))
    assert all("forward" in m.__dict__ for n, m in unet.named_modules() if n.endswith("attn2"))
    assert "forward" in CrossAttention.__dict__


def test_targets_point_at_the_nouns_and_the_single_objects_colour(comfy_ready):
    from toy import model as tm
    from toy.train_v2 import SCENES_V2, targets, word_ids

    tok = tm.tokenizer()
    words = word_ids(tok)
    seen_colour = seen_multi = False
    for i in range(40):
        s = S.training_sample(i, seed=0, config=SCENES_V2)
        ids = tm.token_ids(tok, s.caption)
        pos, masks = targets(s, ids, words)
        objs = s.scene.objects
        for k, obj in enumerate(objs):
            assert ids[pos[k]] == words[obj.shape]
            np.testing.assert_array_equal(masks[k], S.coverage(obj, image_size=128))
        if len(objs) == 1 and s.prompt.mentions[0].colour is not None:
            assert ids[pos[1]] == words[objs[0].colour]
            seen_colour = True
        else:
            assert pos[len(objs):] == [-1] * (4 - len(objs))               # no colour target with two objects
            seen_multi |= len(objs) > 1
    assert seen_colour and seen_multi


@pytest.mark.heavy
def test_a_run_resumed_from_its_checkpoint_writes_the_same_bytes(comfy_ready, tmp_path):
    import json

    import safetensors

    from toy.model import FORMAT, PREFIX_UNET, build_unet, toy_config, world_of
    from toy.train_v2 import train

    tiny = dict(cache=str(tmp_path / "cache"), pool=16, vae_steps=2, vae_batch=2, vae_crop=32, vae_full_steps=1,
                vae_full_batch=1, text_steps=2, text_batch=8, steps=4, batch=4, checkpoint_every=1, threads=1,
                progress=False, log_every=1)
    straight = train(tmp_path / "a.safetensors", workdir=str(tmp_path / "a"), **tiny)
    assert world_of(tmp_path / "a.safetensors") == "v2"
    paused = train(tmp_path / "b.safetensors", workdir=str(tmp_path / "b"), stop_at=2, **tiny)
    assert paused["step"] == 2 and not (tmp_path / "b.safetensors").exists()
    # a snapshot of the paused run: the checkpoint's EMA weights, marked partial, the checkpoint left as it was
    ck = torch.load(tmp_path / "b" / "diffusion.pt", weights_only=False)
    train(tmp_path / "snap.safetensors", workdir=str(tmp_path / "b"), stop_at=2, export_partial=True, **tiny)
    with safetensors.safe_open(str(tmp_path / "snap.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()[FORMAT])["partial_step"] == 2
        unet_keys = [k for k in f.keys() if k.startswith(PREFIX_UNET)]
        names = [k for k, v in build_unet(toy_config()).named_parameters()]
        assert len(names) == len(ck["ema"])
        for name, ema in zip(names, ck["ema"]):
            assert torch.equal(f.get_tensor(PREFIX_UNET + name), ema.half()), name
        assert set(unet_keys) >= {PREFIX_UNET + n for n in names}
    assert torch.load(tmp_path / "b" / "diffusion.pt", weights_only=False)["step"] == 2
    with pytest.raises(ValueError, match="stop_at is 1 but the checkpoint .* is at step 2"):
        train(tmp_path / "x.safetensors", workdir=str(tmp_path / "b"), stop_at=1, **tiny)
    resumed = train(tmp_path / "b.safetensors", workdir=str(tmp_path / "b"), **tiny)
    assert resumed["sha256"] == straight["sha256"]
    other = train(tmp_path / "c.safetensors", workdir=str(tmp_path / "c"), **{**tiny, "seed": 1})
    assert other["sha256"] != straight["sha256"]
    with pytest.raises(ValueError, match="holds a checkpoint of other settings"):
        train(tmp_path / "d.safetensors", workdir=str(tmp_path / "a"), **{**tiny, "token_weight": 0.5})


# ------------------------------------------------------------------------------------------------ word maps
def _maps_4x4():
    """T = 6 (start, noun, colour, end, pad, pad), 4 × 4 maps at the image's own size; the object is the top-left
    2 × 2. Inside it the noun has 0.085 and the colour word 0.015 of the attention; outside both have 0.01."""
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    inside, outside = [0.5, 0.085, 0.015, 0.1, 0.15, 0.15], [0.5, 0.01, 0.01, 0.1, 0.19, 0.19]
    a = torch.tensor([inside if m else outside for m in mask.reshape(-1)]).T.reshape(6, 4, 4)
    return a, mask


def test_word_maps_are_renormalised_over_the_words_before_the_threshold():
    from toy.judge import word_map_scores

    a, mask = _maps_4x4()
    assert torch.allclose(a.sum(0), torch.ones(4, 4))
    r = word_map_scores(a, end=3, words=[("noun", 1, mask), ("colour", 2, mask)])
    # noun share: 0.85 inside, 0.5 outside (0.01 / 0.02) ≥ 0.4 × 0.85 → covers all 16 pixels: IoU 4 / 16; the raw
    # probabilities (0.085 vs 0.01) would have given IoU 1
    assert r["noun_iou"] == [pytest.approx(0.25)]
    assert r["noun_peak_on_object"] == [1.0] and r["flat_iou"] == [pytest.approx(0.25)]
    # colour share: 0.15 inside, 0.5 outside; threshold 0.2 keeps the 12 outside pixels: IoU 0
    assert r["colour_iou"] == [0.0]
    assert r["mass_start"] == [pytest.approx(0.5)] and r["mass_end"] == [pytest.approx(0.1)]
    assert r["mass_words"] == [pytest.approx((4 * 0.1 + 12 * 0.02) / 16)]
    assert r["mass_padding"] == [pytest.approx((4 * 0.3 + 12 * 0.38) / 16)]
    # a coarser map is upsampled bilinearly (half-pixel centres) to the mask: a 2 × 2 map whose noun share is 1 in
    # the top-left cell and 0 elsewhere, against an 8 × 8 image. Pixel i samples the cells at (i + ½) / 4 − ½,
    # clamped to [0, 1], so along each axis the share is 1, 1, .875, .625, .375, .125, 0, 0; the 2-D share is the
    # product, ≥ 0.4 for rows 0–2 × columns 0–3 and row 3 × columns 0–2 (.625 × .875 = .547; .625² = .39 is not):
    # 15 pixels, all inside the object (the top-left quarter, 16 pixels): IoU 15 / 16
    cell = torch.tensor([[0.5, 0.2, 0.0, 0.1, 0.1, 0.1], [0.5, 0.0, 0.2, 0.1, 0.1, 0.1]])
    coarse = torch.stack([cell[0], cell[1], cell[1], cell[1]]).T.reshape(6, 2, 2)
    big = np.zeros((8, 8), bool)
    big[:4, :4] = True
    r2 = word_map_scores(coarse, end=3, words=[("noun", 1, big)])
    assert r2["noun_iou"] == [pytest.approx(15 / 16)] and r2["noun_peak_on_object"] == [1.0]


@pytest.mark.parametrize("kwargs, message", [
    ({"end": 1}, "end must be a context position in 2..5"),
    ({"end": 3, "words": [("noun", 3, None)]}, r"word position must be one of the prompt's words \(1..2\), got 3"),
    ({"end": 3, "words": [("shape", 1, None)]}, "word role must be 'noun' or 'colour', got 'shape'"),
    ({"end": 3, "threshold": 0.0}, r"threshold must be in \(0, 1\]"),
])
def test_word_map_scores_refuses_bad_input(kwargs, message):
    from toy.judge import word_map_scores

    a, mask = _maps_4x4()
    kwargs = {"words": [], **kwargs}
    kwargs["words"] = [(role, pos, mask) for role, pos, _ in kwargs["words"]]
    with pytest.raises(ValueError, match=message):
        word_map_scores(a, **kwargs)


def test_region_features_are_each_objects_coverage_weighted_mean():
    """The word–region term's image side: the mean feature inside each object, weighted by the share of each cell
    the object covers (worked by hand on a 2-channel, 2 × 2 feature map)."""
    from toy.train_v2 import latent_encoder

    enc = latent_encoder(8)
    enc.body = torch.nn.Identity()                              # features = the input, to check the pooling alone
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 0.0], [0.0, 0.0]]]])          # [B=1, C=2, 2, 2]
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.5], [0.0, 1.0]]]])        # [B=1, K=2, 2, 2]
    r = enc.regions(f, masks)
    assert r.shape == (1, 2, 2)
    assert torch.allclose(r[0, 0], torch.tensor([1.0, 10.0]))                          # the top-left cell alone
    assert torch.allclose(r[0, 1], torch.tensor([(0.5 * 2 + 4) / 1.5, 0.0]))            # half a cell + a whole one


@pytest.mark.parametrize("kwargs, message", [
    ({"tail_swap": 1.5}, r"tail_swap must be a probability in \[0, 1\], got 1.5"),
    ({"text_regions": -1.0}, r"text_regions must be ≥ 0 \(the word–region term's weight\), got -1.0"),
    ({"token_weight": -0.1}, "token_weight and pixel_weight must be ≥ 0"),
])
def test_train_refuses_bad_settings_before_any_work(comfy_ready, tmp_path, kwargs, message):
    from toy.train_v2 import train

    with pytest.raises(ValueError, match=message):
        train(tmp_path / "x.safetensors", workdir=str(tmp_path / "w"), cache=str(tmp_path / "c"), progress=False,
              **kwargs)
    assert not (tmp_path / "c").exists()
