"""Phase-wise Attention Modulation — inspired by Wu et al., "Towards Better Text-to-Image Generation Alignment via
Attention Modulation" (arXiv 2404.13899). No official code exists; this is the pack's own design of its three
components, every constant an input, and neutral settings leave attention untouched (bit-identical output):

1. **Self-attention temperature** (early phase, p < ``temperature_until``): ``softmax(q kᵀ/(τ√d))`` in the
   self-attention (attn1) layers, τ < 1 sharpening patch–patch affinity against entity leakage. Done by scaling q
   by 1/τ, so the host's own attention kernel still runs (no explicit self-attention matrix).
2. **Object-focused masking** of cross-attention (p < ``mask_until``): each patch keeps only its most-attended
   entity group (the group with the largest attention mass on its tokens); the other groups' tokens get −∞
   logits, so the row renormalises over its own entity, bos/eos and function words.
3. **Phase-wise reweighting** of cross-attention: before ``switch`` the entity nouns' columns are multiplied by
   ``noun_weight``, after it the attributes' columns by ``attribute_weight``, then rows are renormalised
   (a ``log w`` added to the logits).

The phase is p = step/N of the running sampler; only the positive prompt's rows are masked or reweighted. The
modulation also applies inside the gradient passes of T-SAM / A&E / SynGen, so their gradients see the attention
that is actually sampled.

On a DiT (Flux, SD3/SD3.5) there is no separate self- and cross-attention: each block's joint attention holds both
(``joint_attention.py``). The pack's transfer: (2) and (3) edit the image queries × text keys logits of every joint
block, inside the joint softmax (the owner is still the group with the largest mass among the text tokens: the
image keys' share cancels); (1) divides the image queries × image keys logits by τ, for every row of the batch as
on a UNet's attn1. The text queries' rows are not touched.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch

from .attention import AttentionEdit, LayerCall, positive_index
from .maps import sampler_step


@dataclass(frozen=True)
class ModulationSettings:
    temperature: float = 1.0            # τ of the self-attention; 1 = off
    temperature_until: float = 0.3      # phase p below which τ applies
    mask_until: float = 0.0             # phase p below which object-focused masking applies; 0 = off
    noun_weight: float = 1.0            # early-phase weight of entity nouns; 1 = off
    attribute_weight: float = 1.0       # late-phase weight of attributes; 1 = off
    switch: float = 0.5                 # phase where the reweighting switches from nouns to attributes

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature: {self.temperature} is not allowed; it must be > 0 (1 = off)")
        for name in ("noun_weight", "attribute_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: {getattr(self, name)} is not allowed; it must be ≥ 0 (1 = off, "
                                 "0 = those tokens get no attention)")
        for name in ("temperature_until", "mask_until", "switch"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: {getattr(self, name)} is not a phase; it must be between 0 and 1")

    def temperature_at(self, p: float) -> float:
        return self.temperature if p < self.temperature_until else 1.0

    def masking_at(self, p: float) -> bool:
        return p < self.mask_until

    def weights_at(self, p: float) -> tuple[float, float]:
        """(noun weight, attribute weight) at phase p."""
        return (self.noun_weight, 1.0) if p < self.switch else (1.0, self.attribute_weight)


def phase(call: LayerCall) -> float:
    """p = step / N of the running sampler (a solver's intermediate σ belongs to the step it lies in)."""
    step, total = sampler_step(call, "Attention Modulation")
    return step / total


def mask_to_owner(scores: torch.Tensor, probs: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """Object-focused masking: scores, probs ``[..., n, T]``; each row keeps the tokens of the group with the largest
    mass in ``probs`` (plus every token outside all groups); the other groups' tokens get −∞."""
    t = scores.shape[-1]
    member = torch.zeros(t, len(groups), dtype=probs.dtype, device=probs.device)   # [T, G]
    for g, tokens in enumerate(groups):
        member[tokens, g] = 1.0
    owner = (probs @ member).argmax(dim=-1)                                        # [..., n]
    in_group = member.sum(dim=-1) > 0                                              # [T]
    allowed = member.T[owner] > 0                                                  # [..., n, T]
    return scores.masked_fill(in_group & ~allowed, float("-inf"))


def modulation_bias(q: torch.Tensor, k: torch.Tensor, heads: int, groups: list[list[int]], mask: bool,
                    column_bias: torch.Tensor) -> torch.Tensor:
    """The additive mask ``[b, heads, n, T]`` equal to :func:`mask_to_owner` then :func:`reweight`, computed from the
    entity tokens' scores alone: a group's attention mass is ``Σ_{t∈g} exp(s_t)/Z``, so the owner is the argmax of
    each group's log-sum-exp (Z cancels). ``column_bias`` ``[T]`` holds the reweighting's ``log w``."""
    b, n, inner = q.shape
    t = k.shape[1]
    out = column_bias.to(device=q.device, dtype=torch.float32).expand(b, heads, n, t).clone()
    if mask:
        tokens = sorted({p for g in groups for p in g})
        d = inner // heads
        qh = q.float().view(b, n, heads, d).transpose(1, 2)                          # [b, heads, n, d]
        kg = k[:, tokens].float().view(b, len(tokens), heads, d).transpose(1, 2)     # [b, heads, |G|, d]
        s = qh @ kg.transpose(-1, -2) * d ** -0.5                                    # [b, heads, n, |G|]
        where = {p: i for i, p in enumerate(tokens)}
        lse = torch.stack([s[..., [where[p] for p in g]].logsumexp(dim=-1) for g in groups], dim=-1)
        owner = lse.argmax(dim=-1)                                                   # [b, heads, n]
        member = torch.zeros(t, len(groups), dtype=torch.bool, device=q.device)      # [T, G]
        for gi, g in enumerate(groups):
            member[g, gi] = True
        in_group = member.any(dim=-1)                                                # [T]
        allowed = member.T[owner]                                                    # [b, heads, n, T]
        out = out.masked_fill(in_group & ~allowed, float("-inf"))
    return out


def log_weight(weight: float) -> float:
    """``log w`` as a logit offset; weight 0 gives −∞ (those tokens get probability exactly 0, the row renormalises
    over the others, bos among them, so no row is ever all −∞)."""
    return math.log(weight) if weight > 0 else float("-inf")


def reweight(scores: torch.Tensor, columns: list[int], weight: float) -> torch.Tensor:
    """Multiply the probabilities of ``columns`` by ``weight`` and renormalise (``log w`` added to the logits)."""
    if weight == 1.0 or not columns:
        return scores
    out = scores.clone()
    out[..., columns] += log_weight(weight)
    return out


@dataclass(frozen=True, eq=False)
class ModulationEdit:
    """What the Attention Modulation node hands on: the settings and the token positions of the entity groups
    (modifiers first, noun last), nouns and attributes; :meth:`for_run` makes the edit of one sampling run."""

    settings: ModulationSettings
    groups: list[list[int]]
    nouns: list[int]
    attributes: list[int]

    name = "Attention Modulation"
    min_map_side = 1
    dit_only = False

    def for_run(self, layers: Collection | None = None) -> CrossAttentionModulation:
        """The edit for one run's layers (it keeps no state, so this only binds the settings to them)."""
        return CrossAttentionModulation(self.settings, self.groups, self.nouns, self.attributes, layers=layers)


class CrossAttentionModulation(AttentionEdit):
    """The edit of one run: masking and reweighting on the positive prompt's rows, as an additive logit bias
    (:meth:`bias`); on a DiT block also the self-attention temperature (:meth:`image_scale`)."""

    name = "Attention Modulation"
    adds_bias = True

    def __init__(self, settings: ModulationSettings, groups: list[list[int]], nouns: list[int], attributes: list[int],
                 *, layers: Collection | None = None):
        self.settings, self.groups, self.nouns, self.attributes = settings, groups, nouns, attributes
        self.layers = None if layers is None else frozenset(layers)

    def _active(self, p: float) -> tuple[bool, float, float]:
        mask = self.settings.masking_at(p) and len(self.groups) >= 2
        w_noun, w_attr = self.settings.weights_at(p)
        return mask, w_noun, w_attr

    def wants(self, call: LayerCall) -> bool:
        if 0 not in call.cond_or_uncond:        # gradient passes included: they must see the attention sampled
            return False
        if self.layers is not None and call.key not in self.layers:
            return False
        mask, w_noun, w_attr = self._active(phase(call))
        return mask or w_noun != 1.0 or w_attr != 1.0

    def wants_block(self, call: LayerCall) -> bool:
        """On a DiT block: :meth:`wants`, or the self-attention temperature is on (:meth:`image_scale`)."""
        if self.layers is not None and call.key not in self.layers:
            return False
        return self.image_scale(call) != 1.0 or self.wants(call)

    def image_scale(self, call: LayerCall) -> float:
        """On a DiT block: the factor 1/τ on the image queries × image keys logits (1 outside the early phase)."""
        return 1.0 / self.settings.temperature_at(phase(call))

    def bias(self, q: torch.Tensor, k: torch.Tensor, heads: int, call: LayerCall) -> torch.Tensor:
        """The additive mask: masking and reweighting on the positive rows, 0 on the others; the host kernel then
        computes the attention (no explicit probability matrix unless someone observes it)."""
        mask, w_noun, w_attr = self._active(phase(call))
        column = torch.zeros(k.shape[1])
        for columns, weight in ((self.nouns, w_noun), (self.attributes, w_attr)):
            if weight != 1.0 and columns:
                column[columns] += log_weight(weight)
        rows = positive_index(call, q.shape[0], q.device)
        out = torch.zeros(q.shape[0], heads, q.shape[1], k.shape[1], device=q.device)
        out[rows] = modulation_bias(q[rows], k[rows], heads, self.groups, mask, column)
        return out
