"""Train the toy text-to-image model from scratch on the toy scenes: one command, deterministic under a seed.

    python -m toy.train --out toy/weights/toy_shapes.safetensors --seed 0          (from the repository root)

Phases (each with a tqdm bar; every ``--log-every`` steps a JSON line goes to ``<out>.log.jsonl``):
    1. VAE: ComfyUI's AutoencoderKL (toy config) on random ``--vae-crop`` px crops of 128 px scenes (it is fully
       convolutional; crops cut its cost; a quarter of them on each axis touch the image border), then
       ``--vae-full-steps`` steps on whole images (the decoder learns the borders), loss MSE + ``--kl`` · KL, Adam
       with a cosine decay. Then its latent is renormalised to SD1.5's latent format
       (:func:`toy.model.normalise_vae_latent_`).
    2. Latent pool: ``--pool`` scenes ``training_sample(i, seed)``, i < pool, encoded once (posterior mean, × 0.18215
       as ComfyUI's SD15 latent format does) with their captions' CLIP token ids.
    3. UNet + text encoder, jointly (the VAE frozen): eps prediction on ComfyUI's SD1.5 schedule (1000 steps,
       scaled-linear betas), captions dropped to "" with probability ``--uncond`` (for CFG), plain MSE (``--min-snr γ``
       weights it by Min-SNR-γ; off by default and not used for the shipped file), AdamW with warm-up and a cosine decay, gradient clipping 1, EMA of the
       weights (the EMA is what is saved).

Determinism: every random draw comes from generators seeded by ``--seed`` (scenes by ``training_sample(i, seed)``,
crops, batches, timesteps and noise by ``torch.Generator``), with ``torch.use_deterministic_algorithms(True)``; the
same command on the same machine and thread count gives bit-identical weights. ``--threads`` sets torch's CPU
threads (default 2). ``--device cuda`` trains on a GPU (deterministic mode there warns instead of failing for ops
without a deterministic kernel).

ComfyUI must be importable: ``$COMFYUI_PATH``, the ComfyUI this pack is installed in, the ``.host/ComfyUI`` that
scripts/setup_env.sh builds, or ``~/ComfyUI`` (as scripts/headless.py finds it).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def boot_comfy(device: str) -> None:
    """Make ``comfy`` importable and tell it about the device before ``comfy.model_management`` loads."""
    if "comfy" not in sys.modules:
        sys.path.insert(0, str(ROOT / "scripts"))
        import headless

        path = headless.require_comfyui()
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from comfy.cli_args import args

    if "comfy.model_management" not in sys.modules:
        args.cpu = device == "cpu"


def scene_images(indices, *, seed: int, image_size: int | None = None, config=None) -> tuple[np.ndarray, list[str]]:
    """Scenes ``training_sample(i, seed)`` of ``config`` (default: the default scenes at ``image_size`` px): uint8
    ``[N, H, W, 3]`` and their captions."""
    from toy.scenes import SceneConfig, training_sample

    cfg = config or SceneConfig(image_size=image_size)
    samples = [training_sample(int(i), seed=seed, config=cfg) for i in indices]
    return np.stack([np.asarray(s.image) for s in samples]), [s.caption for s in samples]


def to_tensor(images: np.ndarray, device):
    """uint8 ``[N, H, W, 3]`` → float ``[N, 3, H, W]`` in [-1, 1] (ComfyUI's VAE input range)."""
    import torch

    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class Logger:
    """JSON lines to a file (truncated at start unless ``append``) and the current loss on the bar."""

    def __init__(self, path: Path, *, append: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a" if append else "w", encoding="utf-8")
        self.start = time.time()

    def log(self, **row: Any) -> None:
        row["elapsed_s"] = round(time.time() - self.start, 2)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def cosine(step: int, total: int, *, floor: float = 0.05) -> float:
    """Learning-rate factor: 1 → ``floor`` over ``total`` steps along half a cosine."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def train_vae(vae, *, images, gen, seed: int, steps: int, batch: int, crop: int, full_steps: int, full_batch: int,
              lr: float, kl: float, dev, logger: Logger, log_every: int, progress: bool) -> float:
    """The VAE phase (module docstring, step 1): ``steps`` steps on random ``crop``² crops of ``batch`` scenes (a
    quarter of the crops touch a border, so the decoder learns borders), then ``full_steps`` on ``full_batch`` whole
    images; loss MSE + ``kl`` · KL, Adam with a cosine decay, the posterior noise from ``gen``. ``images(start, n)``
    gives scenes ``start … start + n − 1`` as uint8 ``[n, S, S, 3]``. Returns the last reconstruction MSE."""
    import torch
    from tqdm import tqdm

    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    total = steps + full_steps
    bar = tqdm(range(total), desc="VAE", disable=not progress)
    loss_v = float("nan")
    offset = 0
    for step in bar:
        full = step >= steps                           # the last steps on whole images: their borders too
        n = full_batch if full else batch
        batch_images = images(offset, n)
        size = batch_images.shape[1]
        offset += n
        if full:
            crops = batch_images
        else:
            rng = np.random.default_rng([seed, 1, step])
            ys, xs = rng.integers(0, size - crop + 1, size=(2, n))
            edge = rng.random((2, n)) < 0.25
            ys = np.where(edge[0], rng.choice([0, size - crop], size=n), ys)
            xs = np.where(edge[1], rng.choice([0, size - crop], size=n), xs)
            crops = np.stack([im[y:y + crop, x:x + crop] for im, y, x in zip(batch_images, ys, xs)])
        for group in opt.param_groups:
            group["lr"] = lr * cosine(step, total)
        x = to_tensor(crops, dev)
        moments = vae.quant_conv(vae.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        noise = torch.randn(mean.shape, generator=gen).to(dev)
        z = mean + torch.exp(0.5 * logvar) * noise
        rec = vae.decoder(vae.post_quant_conv(z))
        mse = torch.nn.functional.mse_loss(rec, x)
        kl_term = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = mse + kl * kl_term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_v = float(mse.detach())
        bar.set_postfix(mse=f"{loss_v:.4f}")
        if step % log_every == 0 or step == total - 1:
            logger.log(phase="vae", step=step, mse=loss_v, kl=float(kl_term.detach()), full=full)
    vae.eval()
    return loss_v


def optimiser_step(loss, opt, sched, params, ema_params, *, step: int, ema: float) -> None:
    """One step of the diffusion phase's optimiser: backward, gradient clipping at norm 1, AdamW and schedule, then
    the EMA of the weights with decay ``min(ema, (1 + step) / (10 + step))`` (short-run warm-up of the average)."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    decay = min(ema, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema_params, params):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)


def train(out: str | Path, *, seed: int = 0, vae_steps: int = 1000, vae_batch: int = 12, vae_crop: int = 64,
          vae_full_steps: int = 150, vae_full_batch: int = 6, vae_lr: float = 1e-3, kl: float = 1e-5,
          pool: int = 10000, steps: int = 2600, batch: int = 32, lr: float = 5e-4, warmup: int = 200,
          uncond: float = 0.1, ema: float = 0.999, min_snr: float = 0.0, device: str = "cpu", threads: int = 2,
          log_every: int = 10,
          progress: bool = True, command: str = "") -> dict:
    """Train and write the toy model to ``out`` (see the module docstring); returns a summary (final losses,
    seconds per phase, parameter counts, the file's SHA-256)."""
    boot_comfy(device)
    import hashlib

    import torch
    from tqdm import tqdm

    from toy import model as tm

    for name, value in dict(vae_steps=vae_steps, vae_batch=vae_batch, vae_full_steps=vae_full_steps,
                            vae_full_batch=vae_full_batch, pool=pool, steps=steps, batch=batch).items():
        if not (isinstance(value, int) and value >= (0 if name.endswith("steps") else 1)):
            raise ValueError(f"{name} must be an int ≥ {0 if name.endswith('steps') else 1}, got {value!r}")
    if not (8 <= vae_crop <= tm.IMAGE_SIZE and vae_crop % tm.VAE_FACTOR == 0):
        raise ValueError(f"vae_crop must be a multiple of {tm.VAE_FACTOR} in 8..{tm.IMAGE_SIZE}, got {vae_crop}")
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    dev = torch.device(device)
    out = Path(out)
    logger = Logger(out.with_name(out.name + ".log.jsonl"))
    config = tm.toy_config()
    size = config["image_size"]
    summary: dict[str, Any] = {"seed": seed}

    torch.manual_seed(seed)
    unet = tm.build_unet(config, dtype=torch.float32)
    text = tm.build_text_encoder(config, dtype=torch.float32)
    vae = tm.build_vae_model(config)
    tm.init_weights_(unet, seed=seed)
    tm.init_weights_(text, seed=seed + 1)
    tm.init_weights_(vae, seed=seed + 2)
    tm.make_text_encoder_differentiable_(text)
    unet, text, vae = unet.to(dev), text.to(dev), vae.to(dev)
    summary["parameters"] = {"unet": sum(p.numel() for p in unet.parameters()),
                             "text": sum(p.numel() for p in text.clip_l.transformer.parameters()),
                             "vae": sum(p.numel() for p in vae.parameters())}
    gen = torch.Generator(device="cpu").manual_seed(seed)

    # ---- 1. VAE ------------------------------------------------------------------------------------------------
    t0 = time.time()
    loss_v = train_vae(vae, images=lambda start, n: scene_images(range(start, start + n), seed=seed, image_size=size)[0],
                       gen=gen, seed=seed, steps=vae_steps, batch=vae_batch, crop=vae_crop, full_steps=vae_full_steps,
                       full_batch=vae_full_batch, lr=vae_lr, kl=kl, dev=dev, logger=logger, log_every=log_every,
                       progress=progress)
    summary["vae_mse"] = loss_v
    summary["vae_s"] = round(time.time() - t0, 1)

    # ---- 2. latent normalisation and pool ------------------------------------------------------------------------
    t0 = time.time()
    tok = tm.tokenizer()
    cache: dict[str, list[int]] = {}
    latents, tokens = [], []
    with torch.no_grad():
        chunk = 32
        bar = tqdm(range(0, pool, chunk), desc="encode", disable=not progress)
        for start in bar:
            images, captions = scene_images(range(start, min(start + chunk, pool)), seed=seed, image_size=size)
            latents.append(vae.encode(to_tensor(images, dev)).cpu())   # posterior mode (ComfyUI's VAE.encode)
            for c in captions:
                if c not in cache:
                    cache[c] = tm.token_ids(tok, c)
                tokens.append(cache[c])
        lat = torch.cat(latents)                                        # [pool, 4, 16, 16], raw VAE latent
        mean, std = lat.mean(dim=(0, 2, 3)), lat.std(dim=(0, 2, 3)).clamp_min(1e-6)
        tm.normalise_vae_latent_(vae, mean.to(dev), std.to(dev))
        lat = (lat - mean[None, :, None, None]) / std[None, :, None, None]   # = 0.18215 · normalised VAE latent
    empty = tm.token_ids(tok, "")
    tokens_t = torch.tensor(tokens, dtype=torch.long)                    # [pool, 77]
    summary["pool_s"] = round(time.time() - t0, 1)
    logger.log(phase="pool", count=pool, latent_mean=mean.tolist(), latent_std=std.tolist())

    # ---- 3. UNet + text encoder ----------------------------------------------------------------------------------
    t0 = time.time()
    ac = tm.alphas_cumprod().to(dev)                                     # [1000]
    params = list(unet.parameters()) + list(text.clip_l.transformer.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * cosine(s, steps))
    ema_params = [p.detach().clone() for p in params]
    unet.train()
    text.train()
    order = torch.randperm(pool, generator=gen)
    pos = 0
    bar = tqdm(range(steps), desc="UNet+text", disable=not progress)
    loss_v, running = float("nan"), None
    for step in bar:
        if pos + batch > pool:
            order, pos = torch.randperm(pool, generator=gen), 0
        idx = order[pos:pos + min(batch, pool)]
        pos += len(idx)
        x0 = lat[idx].to(dev)
        ids = tokens_t[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < uncond
        ids[drop] = torch.tensor(empty, dtype=torch.long)
        t = torch.randint(0, 1000, (len(idx),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen).to(dev)
        a = ac[t.to(dev)][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        context, _pooled = text.clip_l(ids.tolist())
        pred = unet(xt, timesteps=t.to(dev).float(), context=context.to(dev))
        # optional Min-SNR-γ weighting (Hang et al., ICCV 2023): w = min(SNR, γ)/SNR for ε-prediction, so the many
        # easy low-noise steps do not dominate. Off by default: the shipped weights were trained with the plain MSE,
        # and no run with it finished here, so whether it helps this model is unmeasured
        snr = a.reshape(-1) / (1 - a.reshape(-1))
        weight = snr.clamp(max=min_snr) / snr if min_snr > 0 else torch.ones_like(snr)
        loss = (weight * (pred - eps).pow(2).mean(dim=(1, 2, 3))).mean()
        optimiser_step(loss, opt, sched, params, ema_params, step=step, ema=ema)
        loss_v = float(loss.detach())
        running = loss_v if running is None else 0.98 * running + 0.02 * loss_v
        bar.set_postfix(loss=f"{running:.4f}")
        if step % log_every == 0 or step == steps - 1:
            logger.log(phase="diffusion", step=step, loss=loss_v, loss_ema=running, lr=sched.get_last_lr()[0])
    summary["diffusion_loss_ema"] = running
    summary["diffusion_s"] = round(time.time() - t0, 1)
    with torch.no_grad():
        for e, p in zip(ema_params, params):
            p.copy_(e)

    tm.save_toy_model(out, unet.cpu(), text.cpu(), vae.cpu(), config=config,
                      extra_metadata={"command": command,   # no timings, so a rerun writes the same bytes
                                      "summary": {k: v for k, v in summary.items() if not k.endswith("_s")}})
    summary["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    summary["bytes"] = out.stat().st_size
    logger.log(phase="done", **summary)
    logger.close()
    return summary


#: train() arguments that do not change the weights (left out of the command recorded in the file)
NOT_RECORDED = ("log_every", "progress", "command")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "toy" / "weights" / "toy_shapes.safetensors"))
    defaults = {k: v.default for k, v in inspect.signature(train).parameters.items() if v.kind == v.KEYWORD_ONLY}
    for name, default in defaults.items():
        if name in ("progress", "command"):
            continue
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                        help="cpu, cuda or cuda:N" if name == "device" else None)
    ap.add_argument("--no-progress", action="store_true")
    a = vars(ap.parse_args(argv))
    out = a.pop("out")
    progress = not a.pop("no_progress")
    # the file records the settings that make its weights, not where it was written: the same command gives the
    # same bytes wherever --out points. An optional loss weighting left off is not recorded either, so files made
    # before the option existed keep their command
    command = "python -m toy.train " + " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}"
                                                 for k, v in a.items()
                                                 if k not in NOT_RECORDED and not (k == "min_snr" and v == 0))
    summary = train(out, progress=progress, command=command, **a)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
