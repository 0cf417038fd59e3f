"""Input definitions shared by the guidance method nodes (same names, ranges and help everywhere)."""
from __future__ import annotations

from comfy_api.latest import io

from ...guidance.viz import combine_sizes
from ..registry import Method
from ..types import CATEGORY, TextAttentionType
from .words import PARSERS


def method_schema(method: Method, *, description: str, inputs: list, outputs: list) -> io.Schema:
    """A method node's schema: its id and name from the registry, the pack's category."""
    return io.Schema(node_id=method.node.node_id, display_name=method.display_name, category=CATEGORY,
                     description=description, inputs=inputs, outputs=outputs)


def text_attention() -> io.Input:
    return TextAttentionType.Input("text_attention", tooltip="From Text Self-Attention; its CONDITIONING must be the "
                                                             "positive prompt.")


def parser() -> io.Input:
    return io.Combo.Input("parser", options=PARSERS, default="builtin",
                          tooltip="Automatic mode: built-in rules + text attention, or spaCy's dependency parse if "
                                  "spaCy and an English model are installed.")


def strength() -> io.Input:
    return io.Float.Input("strength", default=1.0, min=0.0, max=100.0, step=0.05,
                          tooltip="Multiplies every step size; 0 measures the loss per step without changing the "
                                  "image.")


def scale_factor(default: float, help_text: str) -> io.Input:
    return io.Float.Input("scale_factor", default=default, min=0.0, max=1000.0, step=0.5, tooltip=help_text)


def guided_steps(default: int) -> io.Input:
    return io.Int.Input("guided_steps", default=default, min=0, max=50,
                        tooltip=f"Update the latent during the first this-many of 50 steps, scaled to your step count "
                                f"(official: {default}).")


ALL_LEVELS = 0


def recorded_level(name: str, help_text: str) -> io.Input:
    """The map level of Capture and Visualize: the same numeric widget as the methods' ``level``, plus 0 = all."""
    return io.Int.Input(name, default=ALL_LEVELS, min=0, max=64, step=8,
                        tooltip=f"{help_text} As an image divisor like the methods' level: 8 = maps at the latent's "
                                "resolution, 16, 32 (= 16×16 maps at 512 px for SD1.x, the papers' level), 64; "
                                "0 = all levels.")


def maps_at(maps, level: int):
    """What a ``recorded_level`` input picks from an ``ATTENTION_MAPS`` record: ``[B, T, h, w]`` at one image
    divisor, or (0) every recorded level averaged at the finest size."""
    if level == ALL_LEVELS:
        return combine_sizes([maps.mean(v) for v in maps.levels()])
    if level not in maps.levels():
        raise ValueError(f"level: {level} was not recorded; use 0 (every recorded level) or one of "
                         f"{', '.join(str(k) for k in maps.levels())}")
    return maps.mean(level)


def level() -> io.Input:
    return io.Int.Input("level", default=32, min=8, max=64, step=8,
                        tooltip="Maps to use, as an image divisor: 32 = 16×16 at 512 px for SD1.x (the papers'), "
                                "32×32 at 1024 px for SDXL; 16 on Flux and SD3 (every joint block is at image ÷16).")


def fast() -> io.Input:
    # optional: API-format prompts saved before this input existed stay valid (off = the methods as published)
    return io.Boolean.Input("fast", default=False, optional=True,
                            tooltip="Fast mode: take the loss and its gradient from the sampler's own evaluation at each "
                                    "guided step instead of an extra model pass before it (one backward per step, no "
                                    "extra forward; the sampler then continues with its estimate made before the "
                                    "update). No refinement. Off: the methods as published.")


DIT_BLOCKS = ("all", "double")


def dit_blocks(*, edit: bool = False) -> io.Input:
    """``edit``: the input of an attention edit (which blocks it changes) rather than of a loss (which it reads)."""
    # optional: API-format prompts saved before this input existed stay valid (all = the default)
    if edit:
        tooltip = ("Flux and SD3 only: which joint blocks the edit changes. all: every block. double: Flux's 19 "
                   "double-stream blocks only, where text and image keep separate weights (fewer blocks computed "
                   "explicitly). On SD3 every block is a double block. Ignored on UNets.")
    else:
        tooltip = ("Flux and SD3 only: which joint blocks the loss reads. all: every block, averaged (gsn-factory's "
                   "choice on SD3). double: Flux's 19 double-stream blocks only, where text and image keep separate "
                   "weights; the gradient pass then stops before the 38 single-stream blocks. On SD3 every block is "
                   "a double block. Ignored on UNets.")
    return io.Combo.Input("dit_blocks", options=list(DIT_BLOCKS), default="all", optional=True, tooltip=tooltip)


ENCODERS = ("text_attention", "both")


def encoders() -> io.Input:
    # optional: API prompts saved before this input existed stay valid (text_attention = what they did)
    return io.Combo.Input("encoders", options=list(ENCODERS), default="text_attention", optional=True,
                          tooltip="SD3 only, whose context holds CLIP-L/G's tokens, then T5's. text_attention: the "
                                  "loss reads the tokens of the encoder Text Self-Attention read (T5 with encoder = "
                                  "auto, CLIP-L with clip_l). both: the mean of the loss on each encoder's own "
                                  "tokens of the same words (gsn-factory's rule when it does not average the maps).")


def wants_both_encoders(value: str, text_attention) -> bool:
    """Whether an ``encoders`` input asks for both encoders; refuses a value it does not know, and ``both`` where the
    context holds one encoder's tokens."""
    if value not in ENCODERS:
        raise ValueError(f"encoders: '{value}' is not one of {', '.join(ENCODERS)}")
    if value == "both" and text_attention.twin is None:
        raise ValueError(f"encoders: 'both' needs a context made of two text encoders' tokens (SD3: CLIP-L/G's, "
                         f"then T5's); this prompt's context holds {text_attention.encoder}'s only. Use "
                         "text_attention.")
    return value == "both"


def check_dit_blocks(value: str) -> str:
    if value not in DIT_BLOCKS:
        raise ValueError(f"dit_blocks: '{value}' is not one of {', '.join(DIT_BLOCKS)}")
    return value
