"""Attention Regulation: optimise a bias on the target tokens' cross-attention logits, no UNet backward.

Zhang et al., ECCV 2024 (arXiv 2403.06381); official ``YaNgZhAnG-V5/attention_regulation``,
``attn_processor.py`` (``AttnProcessorAttnMapEdit``). In each chosen layer, during the first 25 of 50 steps, the
positive prompt's logits (one row set per batch item × head, on the layer's h×w grid) get an additive bias on the
target columns, a weighted sum of a fixed bank of 2-D Gaussian bumps; only the bump weights W are optimised:

* loss (Eq. 9) ``1·mean((q₀.₉(P_t) − 0.9)²) + 80·mean((mean(P_t) − thr/n)²) + 0.09·mean(W²)`` on the targets'
  softmax probabilities P_t, thr = min(1, 0.2·n) (so 0.2 per target for n ≤ 5);
* 20 plain steps ``W ← W − (B·H)·100·∇W`` from ``W ~ U[0, 1)``; the lowest-loss bias seen is kept;
* blend ``0.25·previous + 0.75·best`` with the previous step's best of the same layer (the initial random bias at
  the layer's first edit), scaled by ``0.99^step``;
* after the softmax the bos and eos columns get their unedited probabilities back (rows then no longer sum to 1,
  as in the official code).

On a DiT (Flux, SD3/SD3.5) the same edit acts on the image queries × text keys logits of every joint-attention
block it is given, inside the joint softmax (``joint_attention.py``): the optimisation sees the image→text
probabilities renormalised over the text tokens — what the maps mean on a UNet, and exactly the distribution over
text the edited block then has. T5 has no start token, so on Flux only the end token ``</s>`` gets its probability
back (SD3's context starts with CLIP's bos).

Differences, on purpose: the previous best is kept per layer, looked up by the layer's block/depth metadata (the
official code pops a FIFO in call order); W comes from a generator seeded by the node's seed (the official code uses
the global RNG); gradients run in local ``enable_grad`` contexts (the official code flips global grad mode and
anomaly detection); non-square maps work, with σ = max(1, min(h, w) // 16) (official: ``w // 16``, which crashes
below 16×16); everything is float32 (the official code casts the edited logits to fp16).
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from .attention import AttentionEdit, LayerCall, positive_index
from .maps import sampler_step
from .schedule import scale_step


def gaussian_bank(h: int, w: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The fixed bumps ``[K, h, w]``: σ = max(1, min(h, w)//16), centres every 2σ from 2σ (49 at 16×16);
    ``G(y, x) = exp(−((x − x₀)² + (y − y₀)²)/(2σ²))``, unnormalised, x₀ in the outer loop as officially."""
    sigma = max(1, min(h, w) // 16)
    xs = torch.arange(w, dtype=dtype, device=device)[None, :]
    ys = torch.arange(h, dtype=dtype, device=device)[:, None]
    maps = [torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma ** 2))
            for x0 in range(2 * sigma, w, 2 * sigma) for y0 in range(2 * sigma, h, 2 * sigma)]
    if not maps:
        raise ValueError(f"Attention Regulation: maps of {h}×{w} are too small for its Gaussian bank (each side must "
                         f"exceed {2 * sigma}); use a larger image or a finer level")
    return torch.stack(maps)


def regulation_loss(target_probs: torch.Tensor, weights: torch.Tensor, threshold: float, *, gamma: float = 1.0,
                    delta: float = 80.0, epsilon: float = 0.09) -> torch.Tensor:
    """Eq. 9: target_probs ``[R, h, w, n]`` (softmax probabilities of the n targets), weights ``[R, K, n]``."""
    r, h, w, n = target_probs.shape
    high = ((torch.quantile(target_probs.reshape(r, h * w, n), 0.9, dim=1) - 0.9) ** 2).mean()
    similar = ((target_probs.sum(dim=(1, 2)) / (h * w) - threshold / n) ** 2).mean()
    return gamma * high + delta * similar + epsilon * (weights ** 2).mean()


def optimise_bias(scores: torch.Tensor, targets: list[int], init_weights: torch.Tensor, *, iterations: int = 20,
                  lr: float = 100.0, gamma: float = 1.0, delta: float = 80.0, epsilon: float = 0.09):
    """Optimise the bump weights for logits ``scores`` ``[R, h, w, T]``; returns (best bias, initial bias, the loss
    before optimising, the best loss), the biases ``[R, h, w, n]`` on the target columns. Grad is enabled locally."""
    r, h, w, _ = scores.shape
    bank = gaussian_bank(h, w, scores.dtype, scores.device)                      # [K, h, w]
    threshold = min(1.0, 0.2 * len(targets))
    bias_of = lambda wts: torch.einsum("khw,rkn->rhwn", bank, wts)               # noqa: E731
    best, best_loss, first_loss = None, float("inf"), None
    with torch.enable_grad():
        weights = init_weights.to(scores).detach().clone().requires_grad_(True)
        initial = bias_of(weights).detach()
        for _ in range(iterations):
            bias = bias_of(weights)
            additive = torch.zeros_like(scores)
            additive[..., targets] = bias                                          # only the target columns move
            edited = scores + additive
            loss = regulation_loss(edited.softmax(dim=-1)[..., targets], weights, threshold, gamma=gamma, delta=delta,
                                   epsilon=epsilon)
            first_loss = loss.item() if first_loss is None else first_loss
            if loss.item() < best_loss:
                best_loss, best = loss.item(), bias.detach().clone()
            (grad,) = torch.autograd.grad(loss, weights)
            weights = (weights - r * lr * grad).detach().requires_grad_(True)
    return best, initial, first_loss, best_loss


@dataclass(frozen=True, kw_only=True)
class RegulationSettings:
    """Attention Regulation's configuration (what the node hands on): target token positions, the prompt's eos
    position, the seed of the initial bump weights and the official constants. :meth:`for_run` makes the editor of
    one sampling run."""

    targets: tuple[int, ...]
    eos_index: int                      # the prompt's end token in the context (its probability is put back)
    start_token: bool = True            # column 0 is a start token (CLIP's bos) whose probability is put back too;
                                        # False for Flux, whose T5-only context has none (column 0 is a word)
    seed: int = 0
    edit_paper_steps: float = 25
    iterations: int = 20
    lr: float = 100.0
    decay: float = 0.25
    global_decay: float = 0.99
    gamma: float = 1.0
    delta: float = 80.0
    epsilon: float = 0.09

    name = "Attention Regulation"
    min_map_side = 3                    # the Gaussian bank needs a centre at 2σ < side (σ = 1 below 16×16)
    dit_only = False

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("targets: Attention Regulation needs at least one target word")
        object.__setattr__(self, "targets", tuple(self.targets))

    def for_run(self, layers: Collection | None = None) -> AttentionRegulation:
        return AttentionRegulation(self, layers=layers)


class AttentionRegulation(AttentionEdit):
    """The editor of one sampling run: regulates the target tokens' logits in ``layers`` (replace keys; None: any
    layer it is called for) during the first steps. Its state — the previous step's best bias per layer, the random
    stream of initial weights, the losses — belongs to that run only."""

    name = RegulationSettings.name
    min_map_side = RegulationSettings.min_map_side
    edits_scores = True                 # a logit bias optimised on the call's own scores, then bos/eos put back

    def __init__(self, settings: RegulationSettings, *, layers: Collection | None = None):
        self.settings = settings
        self.targets, self.eos_index = list(settings.targets), settings.eos_index
        self.keep = ([0] if settings.start_token else []) + [settings.eos_index]   # columns given back their probs
        self.layers = None if layers is None else frozenset(layers)
        self.previous: dict[tuple[str, int, int], torch.Tensor] = {}
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.edits = 0
        self.losses: dict[int, list[tuple[float, float]]] = {}   # step → (loss before, best loss) per layer call

    def _step(self, call: LayerCall) -> tuple[int, int]:
        step, total = sampler_step(call, "Attention Regulation")
        return step, scale_step(self.settings.edit_paper_steps, total)

    def wants(self, call: LayerCall) -> bool:
        """Sampler passes with a positive prompt, in its layers, during the first steps."""
        if not call.sampler_pass or 0 not in call.cond_or_uncond or \
                (self.layers is not None and call.key not in self.layers):
            return False
        step, n_edit = self._step(call)
        return step < n_edit

    def edit_scores(self, scores: torch.Tensor, call: LayerCall) -> torch.Tensor:
        s = self.settings
        b, heads, n, t = scores.shape
        h, w = call.size
        rows = positive_index(call, b, scores.device)
        pos = scores[rows].reshape(-1, h, w, t)                                   # [R = B·heads, h, w, T]
        init = torch.rand((pos.shape[0], gaussian_bank(h, w).shape[0], len(self.targets)), generator=self.generator)
        with torch.inference_mode(False):
            best, initial, before, after = optimise_bias(pos.detach().clone(), self.targets, init,
                                                         iterations=s.iterations, lr=s.lr, gamma=s.gamma,
                                                         delta=s.delta, epsilon=s.epsilon)
        previous = self.previous.get(call.key, initial)
        self.previous[call.key] = best
        step, _ = self._step(call)
        self.losses.setdefault(step, []).append((before, after))
        bias = (s.decay * previous.to(best) + (1 - s.decay) * best) * s.global_decay ** step
        edited_pos = pos.clone()
        edited_pos[..., self.targets] += bias
        out = scores.clone()
        out[rows] = edited_pos.reshape(-1, heads, n, t)
        self.edits += 1
        return out

    def step_losses(self) -> dict[int, list[tuple[float, float]]]:
        return self.losses

    def edit_probs(self, probs: torch.Tensor, scores: torch.Tensor, call: LayerCall) -> torch.Tensor:
        """Put the unedited bos and eos probabilities back (official: after the softmax, all rows). On a DiT's joint
        attention ``probs`` and ``scores`` span the text and image keys; the text keys come first, so the columns
        are the same."""
        unedited = scores.softmax(dim=-1)
        out = probs.clone()
        out[..., self.keep] = unedited[..., self.keep]
        return out
