"""The pack's nodes and methods, in one place. Read by the extension (which nodes ComfyUI gets), by the method nodes
(their ids and names), and by everything outside the pack that handles methods: the example-workflow builder, the
prompt-set runner (``scripts/compare.py``), the benchmarks, the picture renderer and the documentation tests. Adding a
method is: its mathematics in ``guidance/``, its node in ``nodes/``, one :class:`Method` entry here, its help page
(``web/docs/<node id>.md``) and its README row.

Pure Python: no ComfyUI import, so scripts and tests read it without the host. A method's *official configuration*
is its node's defaults (the live schema is the one source of them; the readers take them from it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Node:
    """One node: its id (the ``class_type`` saved in workflows; never changes), where its class lives
    (``nodes/<module>.py``), its help page's picture (the example workflow that renders it, and which image: ``maps``
    the Visualize grid, ``T`` the T image, ``text`` Show Tokens' text, ``report`` the Attention Report), and its body
    height in the frontend (title bar excluded; the workflow builder lays nodes out with it)."""

    node_id: str
    module: str
    class_name: str
    picture: tuple[str, str]
    height: int = 200


@dataclass(frozen=True)
class Example:
    """A method's example workflow on SD1.5/SDXL: the prompt, seed and the words typed into the node; ``route``
    ``guided`` (Guided KSampler, DDIM, 50 steps) or ``apply`` (Apply Guidance → Capture → the stock KSampler with
    ``sampler`` and ``steps``); ``plot``: the loss per step is drawn beside the maps; ``show_tokens``: a Show Tokens
    node shows what the words resolve to. ``toy``: the toy model's prompt and words (its vocabulary: 6 shapes × 7
    colours), chosen when the graphs were written, before any result was seen."""

    prompt: str
    seed: int
    words: str = ""
    route: str = "guided"
    sampler: str = "ddim"
    steps: int = 50
    plot: bool = True
    show_tokens: bool = True
    inputs: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # inputs set apart from defaults
    toy: tuple[str, str] = ("", "")


@dataclass(frozen=True)
class Method:
    """One method: its ``key`` (the name in ``--methods`` files, benchmark tables and example workflow names), its
    node, what kind of method it is (``gradient``: steps on the latent; ``edit``: changes the attention itself), the
    input that takes the prompt's words and which field of a prompt set fills it (``subjects`` or ``groups``), what a
    strength sweep multiplies, where it runs (``unet``: SD1.x/SD2.x/SDXL; ``dit``: Flux and SD3/SD3.5), whether it
    has fast mode and refinement, its example, and what the example workflows' Notes say about words and steps."""

    key: str
    node: Node
    display_name: str
    kind: str
    graph: str                                   # example workflow stem: example_workflows/<graph>_<family>.json
    word_input: str | None = None
    word_field: str | None = None                # the prompt-set field: "subjects" or "groups"
    sweep: str | None = None                     # "strength", "learning_rate" or "weights" (each weight's w − 1)
    unet: bool = True
    dit: bool = True
    text_attention: bool = True                  # it reads a Text Self-Attention (the prompt's words and T)
    fast: bool = False
    refine_off: tuple[str, object] | None = None  # the input and value that turn its refinement off
    example: Example | None = None
    words_help: str = ""
    steps_help: str = ""
    dit_help: str = ""                           # how it runs on a DiT (gradient methods also share one sentence)
    settings_help: str = ""                      # a default the Notes spell out (every family)


def _node(node_id: str, module: str, class_name: str, picture: tuple[str, str], height: int = 200) -> Node:
    return Node(f"AttentionAlign{node_id}", module, class_name, picture, height)


#: every method, in the order the README and the benchmarks list them
METHODS: tuple[Method, ...] = (
    Method("tsam", _node("TSAM", "tsam", "TSAMGuidance", ("tsam_toy", "maps"), 226), "T-SAM Guidance", "gradient",
           "tsam", sweep="strength", fast=True, refine_off=("refine", "off"),
           example=Example("a black car and a white clock", 4913, show_tokens=False,
                           toy=("a yellow star next to a green heart", "")),
           words_help="Words: only the prompt, in Text Self-Attention: T-SAM aligns every pair of its tokens, nothing "
                      "else to type.",
           steps_help="50 (the papers' schedule; fewer are scaled)"),
    Method("attend_excite", _node("AttendExcite", "attend_excite", "AttendExciteGuidance",
                                  ("attend_and_excite_toy", "maps"), 294),
           "Attend-and-Excite Guidance", "gradient", "attend_and_excite", word_input="subjects",
           word_field="subjects", sweep="strength", fast=True, refine_off=("max_refinement_steps", 0),
           example=Example("a cat and a frog", 42, words="cat, frog",
                           toy=("a purple cross and an orange triangle", "cross, triangle")),
           words_help="Words: your prompt in Text Self-Attention; in Attend-and-Excite the subjects that must appear, "
                      "comma-separated words of the prompt ('cat, frog'), or empty for its nouns. Show Tokens shows "
                      "what they resolve to before you sample.",
           steps_help="50 (the papers' schedule; fewer are scaled)",
           settings_help="Softmax: auto (the default) keeps the padding in A&E's softmax for CLIP-L/G, as the official "
                         "SD1 code, and leaves it out for T5 (Flux, SD3) and SD2.x's OpenCLIP-H, as the references "
                         "do; the tokens output says which ran.",
           dit_help="On SD3, encoders = both averages the loss on T5's and CLIP-L's tokens of the subjects (the "
                    "default reads T5's alone)."),
    Method("syngen", _node("SynGen", "syngen", "SynGenGuidance", ("syngen_toy", "maps"), 246), "SynGen Guidance",
           "gradient", "syngen", word_input="groups", word_field="groups", sweep="strength", fast=True,
           example=Example("a checkered bowl on a red and blue table", 1924,
                           toy=("a white circle next to a red square", "white circle; red square")),
           words_help="Words: your prompt in Text Self-Attention; in SynGen the groups, modifiers then noun, ';' "
                      "between groups ('checkered bowl; red and blue table'), or empty to find them (see Show "
                      "Tokens).",
           steps_help="50 (the papers' schedule; fewer are scaled)",
           dit_help="On SD3, encoders = both averages the loss on T5's and CLIP-L's tokens of the groups (the default "
                    "reads T5's alone)."),
    Method("attention_regulation", _node("AttentionRegulation", "attn_regulation", "AttentionRegulationGuidance",
                                         ("attention_regulation_toy", "maps"), 246),
           "Attention Regulation", "edit", "attention_regulation", word_input="targets", word_field="subjects",
           sweep="learning_rate",
           example=Example("a cat and a dog", 42, words="cat, dog", route="apply", sampler="dpmpp_2m", steps=50,
                           inputs=MappingProxyType({"seed": 42}),
                           toy=("a blue triangle and a yellow star", "triangle, star")),
           words_help="Words: your prompt in Text Self-Attention; in Attention Regulation the target words, "
                      "comma-separated ('cat, dog'), or empty for the prompt's nouns.",
           steps_help="50 (the papers' schedule; fewer are scaled)",
           dit_help="It edits the image→text logits of every joint-attention block (level 16, the only level a DiT "
                    "has; dit_blocks = double: Flux's double-stream blocks only). No DiT settings were published; "
                    "these are its SD1.5 ones."),
    Method("attention_modulation", _node("AttentionModulation", "modulation", "AttentionModulationGuidance",
                                         ("attention_modulation_toy", "maps"), 246),
           "Attention Modulation", "edit", "attention_modulation", word_input="entities", word_field="groups",
           sweep="weights",
           example=Example("a red car and a blue bench", 7, route="apply", sampler="euler", steps=30, plot=False,
                           toy=("a green circle and an orange heart", "green circle; orange heart")),
           words_help="Words: your prompt in Text Self-Attention; in Attention Modulation the entities like SynGen's "
                      "groups ('red car; blue bench'), or empty to find them.",
           steps_help="30 (phases are fractions of the steps)",
           dit_help="It edits every joint-attention block: masking and weights on the image→text logits, the "
                    "temperature on the image→image ones. No DiT settings were published; these are its SD1.5 ones."),
    Method("joint_temperature", _node("JointTemperature", "joint_temperature", "JointTemperature",
                                      ("joint_temperature_flux", "maps"), 110),
           "Joint Attention Temperature", "edit", "joint_temperature", unet=False, text_attention=False,
           dit_help="Joint Attention Temperature: gamma 1.2 for the first tenth of the steps (TACA's setting at 30 "
                    "steps; first_steps = 3 is TACA's own rule, the first 3 steps whatever the count); no words to "
                    "type."),
)

#: every node of the pack, in the order ComfyUI's node library lists them
NODES: tuple[Node, ...] = (
    _node("TextSelfAttention", "text_attention", "TextSelfAttention", ("capture_and_visualise_toy", "T"), 176),
    _node("CaptureCrossAttention", "capture", "CaptureCrossAttention", ("capture_and_visualise_toy", "maps"), 160),
    _node("Visualize", "visualize", "VisualizeAttention", ("attend_and_excite_toy", "maps"), 166),
    *(m.node for m in METHODS if m.unet),
    _node("ShowTokens", "show_tokens", "ShowTokens", ("syngen_toy", "text"), 260),
    _node("GuidedKSampler", "guided_sampler", "GuidedKSampler", ("tsam_toy", "maps"), 282),
    _node("ApplyGuidance", "apply_guidance", "ApplyGuidance", ("attention_regulation_toy", "maps"), 160),
    _node("LoadToyModel", "toy_loader", "LoadToyModel", ("capture_and_visualise_toy", "maps"), 160),
    _node("Report", "report", "AttentionReport", ("attend_and_excite_toy", "report")),
    *(m.node for m in METHODS if not m.unet),
)

_BY_KEY = {m.key: m for m in METHODS}
_BY_NODE = {m.node.node_id: m for m in METHODS}


def method(key: str) -> Method:
    """The method called ``key``; raises naming the known ones."""
    if key not in _BY_KEY:
        raise KeyError(f"unknown method '{key}'; known: {', '.join(_BY_KEY)}")
    return _BY_KEY[key]


def method_of_node(node_id: str) -> Method | None:
    """The method whose node is ``node_id`` (None for a node that is not a method)."""
    return _BY_NODE.get(node_id)
