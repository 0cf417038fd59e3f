"""Image→text attention inside a DiT's joint attention (Flux, SD3/SD3.5's MMDiT) — pure torch.

A DiT has no cross-attention layer: text and image tokens are concatenated and attend to each other in one softmax
per block, text first (Flux: ``[T5 tokens, image tokens]``; SD3: ``[CLIP-L/G ⊕ T5 tokens, image tokens]``). The
counterpart of a UNet's cross-attention map is the block of that attention where image tokens query text keys
(gsn-factory, Grimal et al., AAAI 2026, reads that block of the joint softmax on SD3). Each image query's scores
over the text keys are turned into a distribution over the text tokens::

    P[b, head, i, t] = softmax_t( q_img[i] · k_txt[t] / √d )              (sums to 1 over the T text tokens)

which is the joint softmax's image×text block renormalised per row (the image keys' share of each row cancels;
gsn-factory keeps the unrenormalised block and lets each loss's own softmax over its tokens normalise it). So a
captured map means what it means on a UNet: where each pixel's attention goes among the prompt's tokens.

The host's joint-attention tap (``nodes/host/routers.py``) computes ``P`` with :func:`image_text_probs` (float32,
only for the positive prompt's rows' observers) and hands the call on to the host's kernel, so the block's output is
bit-identical.

Edits of the joint attention (Attention Regulation's logit bias, Attention Modulation's masking, reweighting and
temperature) change only the image queries' rows: those rows are computed explicitly (float32), the text queries'
rows still by the kernel. An edit of the image→text logits ``S[i, t]`` acts inside the whole joint softmax, and
since the image keys' share cancels in ``P``, the renormalised ``P`` an editor optimises or reweights is exactly
the ``P`` the block then uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class JointLayout:
    """Where the text and image tokens sit in one joint-attention call's sequence.

    ``text`` tokens come first, then ``grid[0]·grid[1]`` image tokens in row-major order (the patch grid); a
    sequence may carry further tokens after them (Flux Kontext's reference image), which are neither read nor
    counted as text.
    """

    text: int                      # T: text tokens at the start of the sequence
    grid: tuple[int, int]          # (h, w) of the image token grid (latent ÷ patch size, rounded up)

    @property
    def image(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def minimum_length(self) -> int:
        return self.text + self.image


def heads_layout(q: torch.Tensor, heads: int, skip_reshape: bool) -> torch.Tensor:
    """A kernel argument as ``[b, heads, L, d]``: ComfyUI passes ``[b, heads, L, d]`` with ``skip_reshape`` (Flux)
    and ``[b, L, heads·d]`` otherwise (MMDiT; its v arrives as ``[b, L, heads, d]``, which the kernel views the same
    way)."""
    if skip_reshape:
        return q
    b, n = q.shape[:2]
    return q.reshape(b, n, heads, -1).transpose(1, 2)


def mask_rows(mask: torch.Tensor, rows: slice, length: int) -> torch.Tensor:
    """The call's additive mask as 4-D ``[.., rows, L]``: a mask with one row per query (``length`` of them) is cut
    to ``rows``; one broadcast over the queries is kept as it is."""
    m = mask if mask.ndim == 4 else mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    return m[..., rows, :] if m.shape[-2] == length else m


def image_text_probs(q: torch.Tensor, k: torch.Tensor, layout: JointLayout, *,
                     mask: torch.Tensor | None = None, text_scale: float = 1.0) -> torch.Tensor:
    """``P`` of the module docstring, in at least float32.

    q, k: ``[b, heads, L, d]`` (after RoPE / QK-norm, exactly what the kernel receives), L ≥ ``layout.minimum_length``;
    mask: the call's additive attention mask, broadcastable to ``[b, heads, L, L]``, or None; ``text_scale``: the
    factor an edit puts on these logits (see ``joint_temperature.py``), so observers see the attention sampled.
    Returns ``[b, heads, n_img, T]``; every row sums to 1 over the T text tokens.
    """
    if q.shape[-2] < layout.minimum_length or k.shape[-2] < layout.minimum_length:
        raise ValueError(f"joint attention: {q.shape[-2]} tokens cannot hold {layout.text} text tokens and a "
                         f"{layout.grid[0]}×{layout.grid[1]} image grid")
    dtype = torch.promote_types(q.dtype, torch.float32)
    t, n = layout.text, layout.image
    qi = q[..., t:t + n, :].to(dtype)                                  # [b, heads, n_img, d]
    kt = k[..., :t, :].to(dtype)                                       # [b, heads, T, d]
    scores = qi @ kt.transpose(-1, -2) * (text_scale * q.shape[-1] ** -0.5)   # [b, heads, n_img, T]
    if mask is not None:
        scores = scores + mask_rows(mask, slice(t, t + n), q.shape[-2])[..., :t].to(dtype)
    return scores.softmax(dim=-1)


def scaled_text_keys(k: torch.Tensor, text: int, scale: float, skip_reshape: bool) -> torch.Tensor:
    """k with its first ``text`` tokens multiplied by ``scale`` (k in the kernel's layout)."""
    k = k.clone()
    if skip_reshape:
        k[..., :text, :] *= scale
    else:
        k[:, :text] *= scale
    return k
