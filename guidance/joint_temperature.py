"""A gradient-free image→text temperature on DiT joint attention, in the spirit of TACA (Lv et al., "Rethinking
Cross-Modal Interaction in Multimodal Diffusion Transformers", ICCV 2025, ``Vchitect/TACA``).

In joint attention the image tokens' rows are dominated by the many image keys, so the few text keys get little
weight early on, when the layout forms. TACA multiplies the image-query × text-key logits by γ inside the joint
softmax (TACA §3, its Eq. for the temperature-adjusted attention; released code: γ = 1.2 in every attention layer
for the first 3 of 28–30 steps, both CFG branches, no LoRA needed for the training-free variant)::

    S'[i, t] = γ · q_img[i]·k_txt[t] / √d        for image queries i and text keys t; every other logit unchanged
    out = softmax_row(S') · V                    (the full joint softmax: image and text keys)

Here γ applies while the sampler's phase p = step/N is below ``until`` (0.1 ≈ TACA's 3 of 30 steps: 2 of 20, 5 of
50), or, with ``first_steps`` > 0, during the first ``first_steps`` steps whatever N (TACA's released rule: 3).
Multiplying
those logits by γ is the same as scaling the text keys by γ for the image queries only, so the host's kernel still
computes the attention (twice per block: the text queries with the keys as they are, the image queries with the
text keys scaled): no attention matrix is materialised.
"""
from __future__ import annotations

from dataclasses import dataclass

from .attention import AttentionEdit, LayerCall
from .maps import sampler_step


@dataclass(frozen=True, kw_only=True)
class JointTemperatureSettings:
    """γ and the phase it applies in; :meth:`for_run` gives the editor of one sampling run."""

    gamma: float = 1.2
    until: float = 0.1
    first_steps: int = 0                # > 0: the first this-many steps whatever the step count (``until`` unused)
    name: str = "Joint Attention Temperature"

    min_map_side = 1
    dit_only = True                     # an edit of DiT joint attention (a UNet's text enters through cross-attention)

    def __post_init__(self) -> None:
        if not self.gamma > 0:
            raise ValueError(f"gamma: {self.gamma} is not allowed; it must be > 0 (1 = off, TACA: 1.2)")
        if not 0 <= self.until <= 1:
            raise ValueError(f"until: {self.until} is not a phase; it must be between 0 and 1 (TACA: 0.1)")
        if not (isinstance(self.first_steps, int) and self.first_steps >= 0):
            raise ValueError(f"first_steps: {self.first_steps} is not allowed; it must be a whole number ≥ 0 (0: use "
                             "'until'; TACA: 3)")

    def for_run(self, layers=None) -> JointTemperatureEditor:
        return JointTemperatureEditor(self, None if layers is None else frozenset(layers))


class JointTemperatureEditor(AttentionEdit):
    """The edit of one run: for a block call, the factor on its image→text logits (:meth:`text_scale`); the block
    stays on the host's kernel (its text keys scaled)."""

    def __init__(self, settings: JointTemperatureSettings, layers: frozenset | None):
        self.settings, self.layers = settings, layers
        self.name = settings.name

    def wants(self, call: LayerCall) -> bool:
        return self.layers is None or call.key in self.layers

    def text_scale(self, call: LayerCall) -> float:
        """γ during the first ``first_steps`` steps (when set), else while the phase step/N is below ``until``; else
        1 (both CFG branches, as TACA)."""
        s = self.settings
        step, total = sampler_step(call, s.name)
        active = step < s.first_steps if s.first_steps else step / total < s.until
        return s.gamma if active else 1.0
