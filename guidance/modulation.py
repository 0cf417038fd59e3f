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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .attention_patch import LayerCall, positive_index
from .maps import step_of


@dataclass(frozen=True)
class ModulationSettings:
    temperature: float = 1.0            # τ of the self-attention; 1 = off
    temperature_until: float = 0.3      # phase p below which τ applies
    mask_until: float = 0.0             # phase p below which object-focused masking applies; 0 = off
    noun_weight: float = 1.0            # early-phase weight of entity nouns; 1 = off
    attribute_weight: float = 1.0       # late-phase weight of attributes; 1 = off
    switch: float = 0.5                 # phase where the reweighting switches from nouns to attributes

    def temperature_at(self, p: float) -> float:
        return self.temperature if p < self.temperature_until else 1.0

    def masking_at(self, p: float) -> bool:
        return p < self.mask_until

    def weights_at(self, p: float) -> tuple[float, float]:
        """(noun weight, attribute weight) at phase p."""
        return (self.noun_weight, 1.0) if p < self.switch else (1.0, self.attribute_weight)


def phase(call: LayerCall) -> float:
    """p = step / N of the running sampler (a solver's intermediate σ belongs to the step it lies in)."""
    if call.sigma is None or call.sample_sigmas is None:
        raise RuntimeError("Attention Modulation needs the sampler's σ schedule in transformer_options")
    step, _ = step_of(call.sigma, call.sample_sigmas)
    total = len(call.sample_sigmas) - 1
    return 1.0 if step is None else step / total


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


def reweight(scores: torch.Tensor, columns: list[int], weight: float) -> torch.Tensor:
    """Multiply the probabilities of ``columns`` by ``weight`` and renormalise (``log w`` added to the logits)."""
    if weight == 1.0 or not columns:
        return scores
    out = scores.clone()
    out[..., columns] += math.log(weight)
    return out


class CrossAttentionModulation:
    """attn2 editor: masking and reweighting on the positive prompt's rows."""

    name = "Attention Modulation"

    def __init__(self, settings: ModulationSettings, groups: list[list[int]], nouns: list[int], attributes: list[int]):
        self.settings, self.groups, self.nouns, self.attributes = settings, groups, nouns, attributes

    def __deepcopy__(self, memo: dict) -> "CrossAttentionModulation":
        return self

    def fresh(self) -> "CrossAttentionModulation":
        return self  # stateless
    def _active(self, p: float) -> tuple[bool, float, float]:
        mask = self.settings.masking_at(p) and len(self.groups) >= 2
        w_noun, w_attr = self.settings.weights_at(p)
        return mask, w_noun, w_attr

    def wants(self, call: LayerCall) -> bool:
        if 0 not in call.cond_or_uncond:        # gradient passes included: they must see the attention sampled
            return False
        mask, w_noun, w_attr = self._active(phase(call))
        return mask or w_noun != 1.0 or w_attr != 1.0

    def edit_scores(self, scores: torch.Tensor, call: LayerCall) -> torch.Tensor:
        mask, w_noun, w_attr = self._active(phase(call))
        rows = positive_index(call, scores.shape[0]).to(scores.device)
        pos = scores[rows]
        if mask:
            pos = mask_to_owner(pos, pos.softmax(dim=-1), self.groups)
        pos = reweight(reweight(pos, self.nouns, w_noun), self.attributes, w_attr)
        out = scores.clone()
        out[rows] = pos
        return out

    def edit_probs(self, probs: torch.Tensor, scores: torch.Tensor, call: LayerCall) -> torch.Tensor:
        return probs


class SelfAttentionTemperature:
    """attn1 replace: ``softmax(q kᵀ/(τ√d))`` while the phase is below ``temperature_until`` (q scaled by 1/τ);
    otherwise the host kernel (or another pack's replace) on the untouched inputs."""

    is_attention_align_replace = True

    def __init__(self, attention_fn, settings: ModulationSettings, inner=None):
        self.attention_fn, self.settings, self.inner = attention_fn, settings, inner

    def __deepcopy__(self, memo: dict) -> "SelfAttentionTemperature":
        return self

    def __call__(self, q, k, v, extra_options):
        from .attention_patch import layer_call

        call = layer_call(q, extra_options)
        tau = self.settings.temperature_at(phase(call))
        if tau != 1.0:
            q = q / tau
        if self.inner is not None:
            return self.inner(q, k, v, extra_options)
        return self.attention_fn(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                                 transformer_options=extra_options)
