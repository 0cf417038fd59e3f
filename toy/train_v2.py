"""Train toy model v2: the same world, model classes and file format as v1 (``toy/train.py``), trained so that its
cross-attention maps sit on its objects and its padding carries nothing.

    .venv/bin/python -m toy.train_v2 --out out/toy_v2/toy_shapes.safetensors --workdir out/toy_v2

What differs from v1, and why (the measured failure of v1: its noun maps overlapped their objects no better than a
flat map, and 65–83 % of its cross-attention went to padding tokens that had read the whole caption):

1. Scenes (``SCENES_V2``): objects a little larger (half-extent 0.14–0.20 of the side), more one-object scenes
   (weights 0.4 / 0.35 / 0.25 for 1 / 2 / 3 objects), and the split :data:`toy.scenes.SPLIT_V2`: every colour–shape
   pair is drawn in training, a quarter of the pairs of coloured objects never share a training scene.
2. Text encoder pretrained, then frozen: ComfyUI's CLIP class at v1's size, trained contrastively against the
   scenes (symmetric InfoNCE between its end-token state and a small convolutional encoder of the scene's latent,
   with each caption's colour-swapped twin as an extra negative, so binding decides the match), then frozen for
   the diffusion phase. Its self-attention layers stay, so T-SAM's text attention is a trained one. With
   ``--text-regions W`` > 0 a word–region term of weight W is added (:func:`pretrain_text`): each noun's own token
   (and a one-object scene's colour word) is matched contrastively against the mean latent feature inside its
   object, because the end token, which CLIP's loss trains, is the one token the diffusion phase swaps away.
3. The padding route closed (:func:`toy.grounding.swap_tails`): in every training batch each caption's end token and
   padding are replaced by another caption's, so they carry nothing the UNet can use, while ComfyUI's own 77-token
   encoding at inference stays in distribution.
4. Grounding (TokenCompose's token and pixel losses, :func:`toy.grounding.token_loss` / ``pixel_loss``) on every
   cross-attention layer: each noun's map against its object's mask, and the colour word's map only in one-object
   scenes, so that binding in multi-object scenes stays unsupervised and can fail.
5. Resumable and staged. Stages (VAE, latent pool, text encoder) are cached under ``--cache`` by a hash of every
   setting that makes them, so runs that differ only later share them. The diffusion phase checkpoints to
   ``--workdir`` every ``--checkpoint-every`` steps (weights, EMA, optimiser, schedule, generator state and data
   order) and resumes from there; ``--stop-at N`` ends a piece after step N. Deterministic under ``--seed`` on one
   machine and thread count, resumed or not (tested).
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shlex
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from toy.scenes import COLOURS, SCENES_V2, SHAPES, SPLIT_V2, SceneConfig
from toy.train import ROOT, Logger, boot_comfy, cosine, optimiser_step, scene_images, to_tensor, train_vae

#: target slots per sample: up to three nouns and one colour word
SLOTS = 4
#: map sides the toy UNet's cross-attention layers have (16 × 16 at image ÷8, 8 × 8 at ÷16)
MAP_SIDES = (16, 8)
#: prefix length for text pretraining: the longest caption is 18 tokens, plus start and end
PREFIX = 24
#: CLIP's end token, which ComfyUI's SD1 tokenizer also pads with
END_TOKEN = 49407


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted write never leaves a truncated checkpoint."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def scene_batch(indices, *, seed: int, config: SceneConfig = SCENES_V2):
    """``training_sample(i, seed)`` for each index: the samples (scene, caption, prompt, image)."""
    from toy.scenes import training_sample

    return [training_sample(int(i), seed=seed, config=config) for i in indices]


def word_ids(tok) -> dict[str, int]:
    """Token id of every shape and colour word (each is one token of the CLIP vocabulary)."""
    out = {}
    for w in SHAPES + COLOURS:
        ids = [int(t) for t, _ in tok.tokenize_with_weights(w)["l"][0]]
        out[w] = ids[1]
    return out


def targets(sample, ids: list[int], words: dict[str, int]) -> tuple[list[int], np.ndarray]:
    """Grounding targets of one sample: token positions ``[SLOTS]`` (−1: none) — each object's noun, and its colour
    word when the scene has one object and the caption names the colour — and their coverage masks
    ``[SLOTS, S, S]`` (share of each image pixel the object covers)."""
    from toy.scenes import coverage

    size = sample.scene.image_size
    positions, masks = [-1] * SLOTS, np.zeros((SLOTS, size, size), dtype=np.float32)
    objects = sample.scene.objects
    slot = 0
    for obj in objects:
        positions[slot] = ids.index(words[obj.shape])
        masks[slot] = coverage(obj, image_size=size)
        slot += 1
    if len(objects) == 1 and sample.prompt.mentions[0].colour is not None:
        positions[slot] = ids.index(words[objects[0].colour])
        masks[slot] = masks[0]
    return positions, masks


# ------------------------------------------------------------------------------------------------------ stages
def vae_round_trips(vae, *, count: int, seed: int, dev) -> dict:
    """:func:`toy.judge.round_trip_accuracy` of the raw VAE module on ``count`` v2 scenes."""
    import torch

    from toy.judge import round_trip_accuracy

    def round_trip(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            rec = vae.decode(vae.encode(to_tensor(image[None], dev)))
        return ((rec[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

    return round_trip_accuracy(round_trip, config=SCENES_V2, count=count, seed=seed)


def latent_encoder(width: int):
    """The image side of text pretraining: a small CNN over the scene's latent ``[B, 4, 16, 16]`` → ``[B, width]``
    (mean- and max-pooled features, then a linear map). Discarded after pretraining."""
    import torch
    import torch.nn as nn

    class LatentEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 64, 3, padding=1), nn.GELU(),
                                      nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.GELU(),
                                      nn.Conv2d(128, 128, 3, padding=1), nn.GELU())
            self.head = nn.Linear(256, width)

        def forward(self, z):
            f = self.body(z)
            return self.head(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1))

        def regions(self, z, masks):
            """Mean feature inside each object: ``z`` ``[B, 4, 16, 16]``, ``masks`` ``[B, K, 8, 8]`` (the share of
            each 8 × 8 cell the object covers) → ``[B, K, 128]``."""
            f = self.body(z)                                                          # [B, 128, 8, 8]
            return torch.einsum("bchw,bkhw->bkc", f, masks) / masks.sum(dim=(2, 3)).clamp_min(1e-6)[..., None]

    return LatentEncoder()


def pretrain_text(text, lat, ids, ends, twins, *, seed: int, steps: int, batch: int, lr: float, dev,
                  logger: Logger, log_every: int, progress: bool, positions=None, masks=None,
                  region_weight: float = 0.0) -> dict:
    """Contrastive pretraining of the text encoder against the latents (module docstring, item 2). ``ids``
    ``[P, 77]``, ``ends`` ``[P]``, ``twins`` ``[P, 77]`` (each caption's colour-swapped twin; rows of −1 where
    it has none). With ``region_weight`` > 0 a word–region term is added: each grounded word's output (``positions``
    ``[P, K]``, −1 where a slot is empty: the nouns, and the colour word of one-object scenes) against the mean
    latent feature inside its object (``masks`` ``[P, K, 8, 8]``), symmetric InfoNCE over every word of the batch,
    so that a noun's own token carries what its object looks like (its colour included) rather than only the end
    token, which the diffusion phase swaps away. Returns the last batch's image→text accuracy, binding accuracy (own
    caption scored above its twin) and, with the region term, word→region accuracy."""
    import torch
    from tqdm import tqdm

    from toy.grounding import encode_prefix
    from toy.model import make_text_encoder_differentiable_

    torch.manual_seed(seed + 3)
    width = text.clip_l.transformer.text_model.final_layer_norm.weight.shape[0]
    image_enc = latent_encoder(width).to(dev)
    text_head = torch.nn.Linear(width, width).to(dev)
    scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32, device=dev))
    tm_ = text.clip_l.transformer.text_model
    make_text_encoder_differentiable_(text)
    params = list(tm_.parameters()) + list(image_enc.parameters()) + list(text_head.parameters()) + [scale]
    if region_weight:
        word_head, region_head = torch.nn.Linear(width, width).to(dev), torch.nn.Linear(128, width).to(dev)
        region_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32, device=dev))
        params += list(word_head.parameters()) + list(region_head.parameters()) + [region_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed + 4)
    pool = len(ids)
    text.train()
    stats: dict = {}
    for step in tqdm(range(steps), desc="text", disable=not progress):
        idx = torch.randperm(pool, generator=gen)[:batch]
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * cosine(step, steps)
        has_twin = twins[idx, 0] >= 0
        seqs = torch.cat([ids[idx], twins[idx][has_twin]])[:, :PREFIX].to(dev)
        pos = torch.cat([ends[idx], ends[idx][has_twin]]).to(dev)
        h = encode_prefix(tm_, seqs)                                                   # [B + W, L, C]
        t = text_head(h[torch.arange(len(seqs), device=dev), pos])
        t = torch.nn.functional.normalize(t, dim=-1)
        v = torch.nn.functional.normalize(image_enc(lat[idx].to(dev)), dim=-1)       # [B, C]
        logits = scale.exp().clamp(max=100) * v @ t.T                                  # [B, B + W]
        target = torch.arange(len(idx), device=dev)
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                      + torch.nn.functional.cross_entropy(logits[:, :len(idx)].T, target))
        if region_weight:
            slots = positions[idx].to(dev)                                              # [B, K]
            b, k = (slots >= 0).nonzero(as_tuple=True)
            words = torch.nn.functional.normalize(word_head(h[b, slots[b, k]]), dim=-1)    # [N, C]
            regions = image_enc.regions(lat[idx].to(dev), masks[idx].to(dev).float())     # [B, K, 128]
            regions = torch.nn.functional.normalize(region_head(regions[b, k]), dim=-1)    # [N, C]
            r_logits = region_scale.exp().clamp(max=100) * words @ regions.T
            r_target = torch.arange(len(b), device=dev)
            loss = loss + region_weight * 0.5 * (torch.nn.functional.cross_entropy(r_logits, r_target)
                                                 + torch.nn.functional.cross_entropy(r_logits.T, r_target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            with torch.no_grad():
                acc = float((logits.argmax(1) == target).float().mean())
                rows = has_twin.nonzero()[:, 0].to(dev)          # images with a twin; their twins follow the batch
                own = logits[rows, rows]
                twin = logits[rows, len(idx) + torch.arange(len(rows), device=dev)]
                binding = float((own > twin).float().mean()) if len(own) else float("nan")
            stats = {"loss": float(loss.detach()), "retrieval": acc, "binding": binding}
            if region_weight:
                stats["word_region"] = float((r_logits.argmax(1) == r_target).float().mean())
            logger.log(phase="text", step=step, **stats)
    text.eval()
    for p in text.parameters():
        p.requires_grad_(False)
    return stats


# ------------------------------------------------------------------------------------------------------- train
def train(out: str | Path, *, seed: int = 0, workdir: str = "out/toy_v2", cache: str = "out/toy_cache",
          vae_steps: int = 1500, vae_batch: int = 12, vae_crop: int = 64, vae_full_steps: int = 200,
          vae_full_batch: int = 6, vae_lr: float = 1e-3, kl: float = 1e-5,
          pool: int = 20000, text_steps: int = 1500, text_batch: int = 96, text_lr: float = 5e-4,
          text_regions: float = 0.0,
          steps: int = 12000, batch: int = 32, lr: float = 5e-4, warmup: int = 200, uncond: float = 0.1,
          ema: float = 0.999, tail_swap: float = 1.0, token_weight: float = 0.1, pixel_weight: float = 0.1,
          checkpoint_every: int = 200, stop_at: int = 0, device: str = "cpu", threads: int = 2,
          log_every: int = 10, export_partial: bool = False, progress: bool = True, command: str = "") -> dict:
    """Train toy model v2 (module docstring) and write it to ``out``; returns a summary. With ``stop_at`` > 0 the
    diffusion phase stops after that many steps (checkpointed) and a later call resumes; no file is written unless
    ``export_partial``, which writes the EMA weights reached so far (metadata ``partial_step``) to measure a long run
    on the way. ``stop_at`` equal to the checkpoint's step exports without training."""
    boot_comfy(device)
    import torch
    from tqdm import tqdm

    from toy import grounding as G
    from toy import model as tm

    for name, value in dict(vae_steps=vae_steps, pool=pool, text_steps=text_steps, steps=steps, batch=batch,
                            checkpoint_every=checkpoint_every, stop_at=stop_at).items():
        if not (isinstance(value, int) and value >= (1 if name in ("pool", "batch", "checkpoint_every") else 0)):
            raise ValueError(f"{name} must be a non-negative int (pool, batch, checkpoint_every ≥ 1), got {value!r}")
    if text_regions < 0:
        raise ValueError(f"text_regions must be ≥ 0 (the word–region term's weight), got {text_regions!r}")
    if not 0 <= tail_swap <= 1:
        raise ValueError(f"tail_swap must be a probability in [0, 1], got {tail_swap!r}")
    if token_weight < 0 or pixel_weight < 0:
        raise ValueError(f"token_weight and pixel_weight must be ≥ 0, got {token_weight!r}, {pixel_weight!r}")
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    dev = torch.device(device)
    out, work, cache_dir = Path(out), Path(workdir), Path(cache)
    work.mkdir(parents=True, exist_ok=True)
    logger = Logger(work / "train_log.jsonl", append=True)
    config = tm.toy_config()
    summary: dict[str, Any] = {"seed": seed}
    scenes_key = asdict(SCENES_V2) | {"split": sorted(sorted(map(list, p)) for p in SPLIT_V2.object_pairs)}

    # ---- 1. VAE (cached) -----------------------------------------------------------------------------------------
    vae_key = _key("vae", seed, scenes_key, config["vae"], vae_steps, vae_batch, vae_crop, vae_full_steps,
                   vae_full_batch, vae_lr, kl)
    vae = tm.build_vae_model(config)
    vae_file = cache_dir / f"vae-{vae_key}.pt"
    if vae_file.exists():
        vae.load_state_dict(torch.load(vae_file, weights_only=True)["vae"])
        vae = vae.to(dev).eval()
    else:
        t0 = time.time()
        tm.init_weights_(vae, seed=seed + 2)
        vae = vae.to(dev)
        train_vae(vae, images=lambda start, n: scene_images(range(start, start + n), seed=seed, config=SCENES_V2)[0],
                  gen=torch.Generator().manual_seed(seed), seed=seed, steps=vae_steps, batch=vae_batch, crop=vae_crop,
                  full_steps=vae_full_steps, full_batch=vae_full_batch, lr=vae_lr, kl=kl, dev=dev, logger=logger,
                  log_every=log_every, progress=progress)
        _save({"vae": vae.state_dict()}, vae_file)          # un-normalised; the pool stage normalises it
        logger.log(phase="vae_done", seconds=round(time.time() - t0, 1))

    # ---- 2. latent pool with tokens and grounding targets (cached) ------------------------------------------------
    pool_key = _key("pool", vae_key, pool)
    pool_file = cache_dir / f"pool-{pool_key}.pt"
    tok = tm.tokenizer()
    if pool_file.exists():
        P = torch.load(pool_file, weights_only=True)
    else:
        t0 = time.time()
        words = word_ids(tok)
        from toy.grounding import swap_colours

        known: dict[str, list[int]] = {}

        def tokens(caption: str) -> list[int]:
            if caption not in known:
                known[caption] = tm.token_ids(tok, caption)
            return known[caption]

        lat, ids, twins, positions, masks = [], [], [], [], {s: [] for s in MAP_SIDES}
        with torch.no_grad():
            for start in tqdm(range(0, pool, 32), desc="pool", disable=not progress):
                samples = scene_batch(range(start, min(start + 32, pool)), seed=seed)
                images = np.stack([np.asarray(s.image) for s in samples])
                lat.append(vae.encode(to_tensor(images, dev)).cpu())
                for s in samples:
                    row = tokens(s.caption)
                    twin = swap_colours(s.caption, COLOURS)
                    ids.append(row)
                    twins.append(tokens(twin) if twin else [-1] * len(row))
                    pos, cov = targets(s, row, words)
                    positions.append(pos)
                    for side in MAP_SIDES:
                        masks[side].append(G.area_masks(torch.from_numpy(cov), side).half())
        raw = torch.cat(lat)
        mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3)).clamp_min(1e-6)
        P = {"latent": (raw - mean[None, :, None, None]) / std[None, :, None, None],
             "mean": mean, "std": std, "ids": torch.tensor(ids), "twins": torch.tensor(twins),
             "positions": torch.tensor(positions), **{f"mask{s}": torch.stack(m) for s, m in masks.items()}}
        _save(P, pool_file)
        logger.log(phase="pool_done", count=pool, seconds=round(time.time() - t0, 1))
    tm.normalise_vae_latent_(vae, P["mean"].to(dev), P["std"].to(dev))
    ends = (P["ids"] == END_TOKEN).int().argmax(dim=1)                               # first end token

    # ---- 3. text encoder, pretrained then frozen (cached) ---------------------------------------------------------
    text_key = _key("text", pool_key, config["text"], text_steps, text_batch, text_lr,
                    *([text_regions] if text_regions else []))          # runs without the region term keep their key
    text_file = cache_dir / f"text-{text_key}.pt"
    text = tm.build_text_encoder(config, dtype=torch.float32)
    if text_file.exists():
        text.clip_l.transformer.load_state_dict(torch.load(text_file, weights_only=True)["text"])
    else:
        t0 = time.time()
        tm.init_weights_(text, seed=seed + 1)
        text = text.to(dev)
        stats = pretrain_text(text, P["latent"], P["ids"], ends, P["twins"], seed=seed, steps=text_steps,
                              batch=text_batch, lr=text_lr, dev=dev, logger=logger, log_every=log_every,
                              progress=progress, positions=P["positions"], masks=P["mask8"],
                              region_weight=text_regions)
        _save({"text": text.clip_l.transformer.state_dict(), "stats": stats}, text_file)
        logger.log(phase="text_done", seconds=round(time.time() - t0, 1), **stats)
        text = tm.build_text_encoder(config, dtype=torch.float32)     # a fresh instance, without the training shim
        text.clip_l.transformer.load_state_dict(torch.load(text_file, weights_only=True)["text"])
    text = text.to(dev).eval()
    for p in text.parameters():
        p.requires_grad_(False)

    # ---- 4. UNet: denoising + grounding, tails swapped, resumable -------------------------------------------------
    run_key = _key("unet", text_key, config["unet"], steps, batch, lr, warmup, uncond, ema, tail_swap, token_weight,
                   pixel_weight)
    ckpt_file = work / "diffusion.pt"
    ac = tm.alphas_cumprod().to(dev)
    unet = tm.build_unet(config, dtype=torch.float32)
    tm.init_weights_(unet, seed=seed)
    unet = unet.to(dev)
    probs_store = G.capture_cross_attention_(unet)
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * cosine(s, steps))
    ema_params = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(seed)
    n_pool = len(P["ids"])
    order, pos, start, running = torch.randperm(n_pool, generator=gen), 0, 0, None
    if ckpt_file.exists():
        ck = torch.load(ckpt_file, weights_only=False)
        if ck["run_key"] != run_key:
            raise ValueError(f"workdir {work} holds a checkpoint of other settings (run {ck['run_key']}, these "
                             f"settings are run {run_key}); use another --workdir or delete {ckpt_file}")
        unet.load_state_dict(ck["unet"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        for e, v in zip(ema_params, ck["ema"]):
            e.copy_(v)
        gen.set_state(ck["gen"])
        order, pos, start, running = ck["order"], ck["pos"], ck["step"], ck["running"]
        logger.log(phase="resume", step=start)
    if stop_at and start > stop_at:
        raise ValueError(f"stop_at is {stop_at} but the checkpoint in {work} is at step {start}: stop_at must be "
                         f"≥ {start}")
    empty = torch.tensor(tm.token_ids(tok, ""))
    masks_all = {s: P[f"mask{s}"] for s in MAP_SIDES}
    end_at = min(steps, stop_at) if stop_at else steps

    def checkpoint(step_done: int) -> None:
        _save({"run_key": run_key, "step": step_done, "unet": unet.state_dict(), "opt": opt.state_dict(),
               "sched": sched.state_dict(), "ema": ema_params, "gen": gen.get_state(), "order": order, "pos": pos,
               "running": running}, ckpt_file)

    unet.train()
    t0 = time.time()
    for step in tqdm(range(start, end_at), desc="UNet", disable=not progress, initial=start, total=end_at):
        if pos + batch > n_pool:
            order, pos = torch.randperm(n_pool, generator=gen), 0
        idx = order[pos:pos + min(batch, n_pool)]
        pos += len(idx)
        b = len(idx)
        x0 = P["latent"][idx].to(dev)
        ids = P["ids"][idx].clone()
        tgt = P["positions"][idx].clone()
        drop = torch.rand(b, generator=gen) < uncond
        ids[drop] = empty
        tgt[drop] = -1
        t = torch.randint(0, 1000, (b,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen).to(dev)
        perm = torch.randperm(b, generator=gen)
        swap = torch.rand(b, generator=gen) < tail_swap
        with torch.no_grad():
            context, _ = text.clip_l(ids.tolist())                                      # [B, 77, C]
            e = (ids == END_TOKEN).int().argmax(dim=1).to(dev)
            swapped = G.swap_tails(context.to(dev), e, perm.to(dev))
            context = torch.where(swap.to(dev)[:, None, None], swapped, context.to(dev))
        a = ac[t.to(dev)][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        probs_store.clear()
        pred = unet(xt, timesteps=t.to(dev).float(), context=context)
        mse = (pred - eps).pow(2).mean()
        loss = mse
        tok_l = pix_l = torch.zeros((), device=dev)
        if token_weight or pixel_weight:
            tgt_d = tgt.to(dev)
            m = {s: v[idx].to(dev).float() for s, v in masks_all.items()}
            tok_l = G.token_loss(probs_store, tgt_d, m)
            pix_l = G.pixel_loss(probs_store, tgt_d, m)
            loss = loss + token_weight * tok_l + pixel_weight * pix_l
        optimiser_step(loss, opt, sched, params, ema_params, step=step, ema=ema)
        mse_v = float(mse.detach())
        running = mse_v if running is None else 0.98 * running + 0.02 * mse_v
        if step % log_every == 0 or step == end_at - 1:
            logger.log(phase="diffusion", step=step, mse=mse_v, mse_ema=running, token=float(tok_l.detach()),
                       pixel=float(pix_l.detach()), lr=sched.get_last_lr()[0])
        if (step + 1) % checkpoint_every == 0 or step + 1 == end_at:
            checkpoint(step + 1)
    summary["diffusion_s"] = round(time.time() - t0, 1)
    summary["step"] = end_at
    if end_at < steps and not export_partial:
        logger.log(phase="paused", step=end_at)
        return summary

    with torch.no_grad():
        for e_, p in zip(ema_params, params):
            p.copy_(e_)
    unet_clean = tm.build_unet(config, dtype=torch.float32)                  # without the capture shim
    unet_clean.load_state_dict(unet.state_dict())
    summary["diffusion_mse_ema"] = running
    partial = {"partial_step": end_at} if end_at < steps else {}
    tm.save_toy_model(out, unet_clean.cpu(), text.cpu(), vae.cpu(), config=config,
                      extra_metadata={"command": command, "trainer": "toy.train_v2", **partial,
                                      "summary": {k: v for k, v in summary.items() if not k.endswith("_s")}})
    summary["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    summary["bytes"] = out.stat().st_size
    if partial:
        logger.log(phase="paused", step=end_at, exported=str(out))
        return summary
    summary["vae_round_trips"] = vae_round_trips(vae, count=60, seed=seed + 7, dev=dev)
    logger.log(phase="done", **summary)
    return summary


#: train() arguments that do not change the weights (left out of the command recorded in the file)
NOT_RECORDED = ("workdir", "cache", "checkpoint_every", "stop_at", "log_every", "export_partial", "progress",
                "command", "threads")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "out" / "toy_v2" / "toy_shapes.safetensors"))
    defaults = {k: v.default for k, v in inspect.signature(train).parameters.items() if v.kind == v.KEYWORD_ONLY}
    for name, default in defaults.items():
        if name in ("progress", "command"):
            continue
        if isinstance(default, bool):
            ap.add_argument("--" + name.replace("_", "-"), action="store_true")
            continue
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    ap.add_argument("--no-progress", action="store_true")
    a = vars(ap.parse_args(argv))
    out = a.pop("out")
    progress = not a.pop("no_progress")
    command = "python -m toy.train_v2 " + " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}"
                                                    for k, v in a.items() if k not in NOT_RECORDED)
    print(json.dumps(train(out, progress=progress, command=command, **a), indent=1))


if __name__ == "__main__":
    main()
