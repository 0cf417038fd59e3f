"""Node: KSampler with gradient guidance, also returning the maps and the per-step loss."""
from __future__ import annotations

import comfy.samplers
import nodes as comfy_nodes  # ComfyUI's nodes.py (common_ksampler), not this pack's package
from comfy_api.latest import io

from ..guidance.engine import GuidanceRecord
from ..guidance.maps import AttentionMaps
from .host.backend import backend_of
from .host.guided import captured_model, check_sizes, default_level, guided_model
from .types import CATEGORY, AttentionMapsType, GuidanceLogType, GuidanceType


class GuidedKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionAlignGuidedKSampler",
            display_name="Guided KSampler",
            category=CATEGORY,
            description="KSampler that takes gradient steps on the latent during the first steps so that the "
                        "cross-attention follows the guidance objective. Also returns the positive prompt's "
                        "cross-attention maps at the objective's level and the loss per step.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x, SD2.x or SDXL model (UNet), or Flux / SD3 / SD3.5 (DiT)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Denoising steps."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                               tooltip="Any of ComfyUI's samplers; see the README for how each keeps the update."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, tooltip="Noise schedule."),
                io.Conditioning.Input("positive", tooltip="The prompt (from Text Self-Attention for T-SAM)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (masks for inpainting are kept)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Denoising strength."),
                GuidanceType.Input("guidance", tooltip="From a guidance node such as T-SAM Guidance."),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="LATENT"),
                AttentionMapsType.Output("attention_maps", display_name="attention_maps",
                                         tooltip="The positive prompt's maps at the objective's level."),
                GuidanceLogType.Output("guidance_log", display_name="guidance_log", tooltip="Loss per step."),
            ],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                guidance) -> io.NodeOutput:
        every_layer = backend_of(model).layers()       # a UNet's attn2 layers or a DiT's joint blocks
        check_sizes(guidance, every_layer, tuple(latent_image["samples"].shape[-2:]))   # before loading anything
        guided, log_board = guided_model(model, guidance)
        m, maps_board = captured_model(guided, default_level(guidance, model))
        (latent,) = comfy_nodes.common_ksampler(m, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                latent_image, denoise=denoise)
        # this node ran the only sampling run of its private clone: its records are the outputs. With no step to
        # run (denoise 0) ComfyUI returns the latent without sampling: the records say so.
        maps = maps_board.records[-1] if maps_board.records else AttentionMaps(means={}, map_size={})
        log = log_board.records[-1] if log_board.records else GuidanceRecord(
            guidance.name, sampler_name, "", 0, (), ("no step was sampled (denoise 0)",))
        return io.NodeOutput(latent, maps, log)
