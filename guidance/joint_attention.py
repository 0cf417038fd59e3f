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

:class:`JointAttentionTap` is what the host installs as ComfyUI's ``optimized_attention_override`` for one call of
one block: it computes ``P`` (float32, only for the positive prompt's rows' observers) and hands the call on — to
an override another pack had installed, else to the host's own kernel — so the block's output is bit-identical.

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


class JointAttentionTap:
    """ComfyUI's ``optimized_attention_override`` for one block call: ``tap(func, q, k, v, heads, **kwargs)``.

    ``observe(probs)`` receives ``P`` ``[b, heads, n_img, T]`` for the block's joint call — the call whose keys span
    text and image — once: a block's other attention (SD3.5-medium's image-only self-attention) passes untouched, and
    so does a re-run of the joint call (activation checkpointing recomputing the block during a backward pass).
    ``previous``: the override that was in the options before (another pack's), which then computes the output, as
    the host's kernel ``func`` does otherwise. ``text_scale`` ≠ 1 edits the joint call: its image→text logits are
    multiplied by it (``joint_temperature.py``); observers then see the edited ``P``. ``editors`` (with ``call``,
    the block call's :class:`~.attention_patch.LayerCall`) edit the image rows explicitly (:meth:`_edited`).
    ``observe`` may be None (an edit alone). Holds no state beyond the one call it was made for.
    """

    def __init__(self, layout: JointLayout, observe, previous=None, *, text_scale: float = 1.0, editors=(),
                 call=None):
        self.layout, self.observe, self.previous = layout, observe, previous
        self.text_scale = float(text_scale)         # an edit's factor on the image→text logits (1: none)
        self.editors, self.call = tuple(editors), call   # explicit edits of the image rows (see _edited), their call
        self.observed = False

    def __call__(self, func, *args, **kwargs):
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        skip = bool(kwargs.get("skip_reshape", False))
        length = q.shape[-2] if skip else q.shape[1]
        joint = length >= self.layout.minimum_length and (k.shape[-2] if skip else k.shape[1]) == length
        if joint and self.editors:
            return self._edited(func, args, kwargs, heads, length, skip)
        if joint and self.observe is not None:
            # a re-run (checkpointing's recompute in a backward pass) repeats the same operations, as it must, but
            # is not observed again
            probs = image_text_probs(heads_layout(q, heads, skip), heads_layout(k, heads, skip), self.layout,
                                     mask=kwargs.get("mask"), text_scale=self.text_scale)
            if not self.observed:
                self.observed = True
                self.observe(probs)
        if joint and self.text_scale != 1.0:
            return self._scaled(func, args, kwargs, length, skip)
        return self._run(func, *args, **kwargs)

    def _run(self, func, *args, **kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def _rows(self, func, args, kwargs, part: slice, keys, length: int, skip: bool):
        """The kernel's output for the query rows ``part`` against ``keys`` (in the kernel's layout), with the
        call's mask cut to those rows when it has one row per query."""
        q, v, rest = args[0], args[2], args[3:]
        kw = dict(kwargs)
        mask = kwargs.get("mask")
        if mask is not None and mask.ndim >= 2 and mask.shape[-2] == length:
            kw["mask"] = mask[..., part, :]
        return self._run(func, q[..., part, :] if skip else q[:, part], keys, v, *rest, **kw)

    def _scaled(self, func, args, kwargs, length: int, skip: bool):
        """The joint attention with the image→text logits × ``text_scale``: the text queries against the keys as
        they are, the image queries against keys whose text part is scaled (the same logits as scaling that block
        of the score matrix), each through the host's kernel; outputs joined along the sequence."""
        k, t = args[1], self.layout.text
        outs = [self._rows(func, args, kwargs, slice(0, t), k, length, skip),
                self._rows(func, args, kwargs, slice(t, length), scaled_text_keys(k, t, self.text_scale, skip),
                           length, skip)]
        return torch.cat(outs, dim=-2 if kwargs.get("skip_output_reshape", False) else 1)

    def _edited(self, func, args, kwargs, heads: int, length: int, skip: bool):
        """The joint attention with ``editors`` applied to the image queries' rows, computed explicitly::

            S = q_img · kᵀ / √d (+ the call's mask)         [b, heads, n_img, L], float32
            S[..., text]  × text_scale (Joint Attention Temperature), then + editor.bias(...) (Modulation), then
                          editor.edit_scores(...) (Regulation) — on the image→text block only, by the editors
                          whose ``wants(call)`` is true
            S[..., image] × Π editor.image_scale(call) (Modulation's self-attention temperature: 1/τ)
            out_img = editor.edit_probs(softmax_L(S), S₀) · v     (S₀: S before any edit)

        The text queries' rows (and any rows after the image grid) go through the kernel untouched; the outputs are
        joined along the sequence in the layout the kernel returns."""
        q, k, v = args[0], args[1], args[2]
        t, n = self.layout.text, self.layout.image
        qh, kh, vh = (heads_layout(x, heads, skip) for x in (q, k, v))           # [b, heads, L, d]
        dtype = torch.promote_types(q.dtype, torch.float32)
        d = qh.shape[-1]
        qi = qh[..., t:t + n, :].to(dtype)                                        # [b, heads, n_img, d]
        scores = qi @ kh.to(dtype).transpose(-1, -2) * d ** -0.5                  # [b, heads, n_img, L]
        mask = kwargs.get("mask")
        if mask is not None:
            scores = scores + mask_rows(mask, slice(t, t + n), length).to(dtype)
        unedited = scores
        call = self.call
        text_part = scores[..., :t] * self.text_scale if self.text_scale != 1.0 else scores[..., :t]
        flat = lambda x: x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)   # noqa: E731  [b, n, heads·d]
        logit_editors = [e for e in self.editors if e.wants(call)]        # the image→text edits of this call
        for editor in logit_editors:
            if hasattr(editor, "bias"):
                text_part = text_part + editor.bias(flat(qi), flat(kh[..., :t, :].to(dtype)), heads, call).to(dtype)
        for editor in logit_editors:
            if hasattr(editor, "edit_scores"):
                text_part = editor.edit_scores(text_part, call)
        image_scale = 1.0
        for editor in self.editors:
            if hasattr(editor, "image_scale"):
                image_scale *= editor.image_scale(call)
        image_part = scores[..., t:t + n] * image_scale if image_scale != 1.0 else scores[..., t:t + n]
        probs = torch.cat([text_part, image_part, scores[..., t + n:]], dim=-1).softmax(dim=-1)
        for editor in logit_editors:
            if hasattr(editor, "edit_probs"):
                probs = editor.edit_probs(probs, unedited, call)
        if self.observe is not None and not self.observed:
            self.observed = True
            text_probs = probs[..., :t]
            self.observe(text_probs / text_probs.sum(dim=-1, keepdim=True))
        out_img = (probs @ vh.to(dtype)).to(q.dtype)                             # [b, heads, n_img, d]
        keep_heads = kwargs.get("skip_output_reshape", False)
        if not keep_heads:
            out_img = out_img.transpose(1, 2).reshape(out_img.shape[0], n, -1)   # [b, n_img, heads·d]
        outs = [self._rows(func, args, kwargs, slice(0, t), k, length, skip), out_img]
        if t + n < length:                                                  # tokens after the grid (Kontext)
            outs.append(self._rows(func, args, kwargs, slice(t + n, length), k, length, skip))
        return torch.cat(outs, dim=-2 if keep_heads else 1)
