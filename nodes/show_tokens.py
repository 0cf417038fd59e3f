"""Node: show the tokens, subjects and groups a prompt resolves to, before sampling."""
from __future__ import annotations

from comfy_api.latest import io, ui

from .host.words import PARSERS, NothingFound, groups_for, subjects_for
from .types import CATEGORY, TextAttentionType


class ShowTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionAlignShowTokens",
            display_name="Show Tokens",
            category=CATEGORY,
            is_output_node=True,
            description="Shows the prompt's tokens and the subjects (Attend-and-Excite) and groups (SynGen) that "
                        "the given words — or the automatic mode when empty — resolve to, with token positions.",
            inputs=[
                TextAttentionType.Input("text_attention", tooltip="From Text Self-Attention."),
                io.String.Input("subjects", default="", tooltip="As in Attend-and-Excite Guidance; empty = automatic."),
                io.String.Input("groups", default="", tooltip="As in SynGen Guidance; empty = automatic."),
                io.Combo.Input("parser", options=PARSERS, default="builtin", tooltip="For the automatic mode."),
            ],
            outputs=[io.String.Output("text", display_name="text")],
        )

    @classmethod
    def execute(cls, text_attention, subjects: str, groups: str, parser: str) -> io.NodeOutput:
        ta = text_attention
        pieces = " ".join(f"{ta.offset + i}:{ta.piece_label(p)}" for i, p in enumerate(ta.pieces[:ta.eos_index + 1]))
        lines = [f"tokens: {pieces}"]
        for resolve, spec, name in ((subjects_for, subjects, "subjects"), (groups_for, groups, "groups")):
            try:
                lines.append(resolve(ta, spec, parser)[1])
            except NothingFound:
                lines.append(f"{name} ({parser}): none found")
        text = "\n".join(lines)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
