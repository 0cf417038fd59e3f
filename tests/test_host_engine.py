"""The guided sampler engine with T-SAM in a real ComfyUI, on the tiny random-weight SD1.5-family checkpoint."""
from __future__ import annotations

import copy
import inspect
from types import SimpleNamespace

import pytest
import torch
from conftest import guide

PROMPT = "a black car and a white clock"


@pytest.fixture(scope="module")
def env(host, tiny_ckpt):
    out = host.run({"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}},
                    "t": {"class_type": "AttentionAlignTextSelfAttention",
                          "inputs": {"clip": ["c", 1], "text": PROMPT, "encoder": "auto", "gamma": 3.0}}})
    model, clip, vae = out["c"][:3]
    ta, _, pos = out["t"]
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return SimpleNamespace(host=host, model=model, clip=clip, vae=vae, ta=ta, pos=pos, neg=neg,
                           G=host.pack_module("nodes.host.guided"), T=host.pack_module("guidance.tsam"),
                           S=host.pack_module("nodes.host.samplers"), M=host.pack_module("guidance.method"))


def tsam(env, strength, guided=30, refine="off", variant="paper", *, runaway_bound=True):
    """T-SAM on the tiny model. The persistence tests use strength 3000 so that one update visibly changes the
    result; that is beyond the runaway bound (an update larger than the latent), which they switch off."""
    import dataclasses

    g = env.T.tsam_guidance(env.ta.target(), eos_index=env.ta.eos_index, prompt=env.ta.prompt, variant=variant,
                            strength=strength, scale=5.0, guided_paper_steps=guided, refine=refine,
                            context=env.ta.context)
    return g if runaway_bound else dataclasses.replace(g, max_update_ratio=float("inf"))


def nonlinear(model):
    """The tiny UNet plus an x-dependent term, so that sampler history and noise visibly matter."""
    m = model.clone()
    m.set_model_unet_function_wrapper(
        lambda apply, a: apply(a["input"], a["timestep"], **a["c"]) + 0.5 * torch.tanh(3 * a["input"]))
    return m


def sample(env, model, sampler, size=64, steps=3, batch=1, seed=3, cfg=5.0, latent=None, scheduler="normal",
           positive=None):
    import nodes as comfy_nodes

    latent = latent or {"samples": torch.zeros(batch, 4, size // 8, size // 8)}
    return comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive or env.pos, env.neg,
                                       latent)[0]["samples"]


def restarted(model, x_start, chunk_first=False, skip=0):
    """A reference: the stock sampler function run from ``x_start`` over ``sigmas[skip:]``; with ``chunk_first``,
    its first step alone and then the rest, one noise stream (what the chunked design promises)."""
    import comfy.k_diffusion.sampling as kd
    from comfy.patcher_extension import WrappersMP

    m = model.clone()

    def wrapper(executor, guider, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                disable_pbar=False):
        sampler = executor.class_obj
        original = sampler.sampler_function

        def fn(model_k, x, sig, extra_args=None, callback=None, disable=None, **kw):
            if not chunk_first:
                return original(model_k, x_start.clone(), sig[skip:], extra_args=extra_args, callback=None,
                                disable=True, **kw)
            if "noise_sampler" in inspect.signature(original).parameters:
                name = original.__name__
                if "sde" in name and "er_sde" not in name:
                    kw["noise_sampler"] = kd.BrownianTreeNoiseSampler(x, sig[sig > 0].min(), sig.max(),
                                                                      seed=extra_args.get("seed"),
                                                                      cpu=not name.endswith("_gpu"))
                else:
                    kw["noise_sampler"] = kd.default_noise_sampler(x, seed=extra_args.get("seed"))
            first = original(model_k, x_start.clone(), sig[0:2], extra_args=extra_args, callback=None, disable=True,
                             **kw)
            return original(model_k, first, sig[1:], extra_args=extra_args, callback=None, disable=True, **kw)

        sampler.sampler_function = fn
        try:
            return executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        finally:
            sampler.sampler_function = original

    m.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, "test_restart", wrapper)
    return m


def tsam_graph(ckpt, strength=10.0, level=32, positive_text=None) -> dict:
    """Checkpoint → Text Self-Attention → T-SAM Guidance (+ an empty negative, or a plain positive prompt)."""
    return {
        "c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "t": {"class_type": "AttentionAlignTextSelfAttention",
              "inputs": {"clip": ["c", 1], "text": PROMPT, "encoder": "auto", "gamma": 3.0}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 1], "text": positive_text or ""}},
        "g": {"class_type": "AttentionAlignTSAM", "inputs": {
            "text_attention": ["t", 0], "loss": "paper", "strength": strength, "scale_factor": 5.0,
            "guided_steps": 30, "refine": "off", "threshold_per_token": 0.14, "level": level}},
    }


def test_every_comfyui_sampler_is_classified(env):
    import comfy.samplers

    known = env.S.IN_PLACE | env.S.CHUNKED_EXACT | env.S.CHUNKED_MODIFIED | {"ddim"}
    assert set(comfy.samplers.KSampler.SAMPLERS) <= known, set(comfy.samplers.KSampler.SAMPLERS) - known
    for name in comfy.samplers.KSampler.SAMPLERS:
        sampler = comfy.samplers.sampler_object(name)
        path, label = env.S.choose_path(sampler)
        assert label == name
        assert path == ("in_place" if name in env.S.IN_PLACE or name == "ddim" else "chunked")


@pytest.mark.heavy
def test_update_persists_and_strength_zero_is_stock_for_every_sampler(env):
    """Guidance at step 0 only: the result equals the stock sampler restarted from the updated latent x'₀ (for the
    samplers with no exact option: the step-0-alone solver restarted from x'₀, as documented). Strength 0 gives
    the stock result bit for bit wherever the README promises it."""
    import comfy.samplers

    base = nonlinear(env.model)
    failures = []
    for name in comfy.samplers.KSampler.SAMPLERS:
        stock = sample(env, base, name)
        m0, _ = guide(env.G, base, tsam(env, 0.0))
        zero = sample(env, m0, name)
        exact = name in env.S.IN_PLACE or name in env.S.CHUNKED_EXACT or name == "ddim"
        if exact and not torch.equal(zero, stock):
            failures.append(f"{name}: strength 0 differs from stock by {(zero - stock).abs().max():.3g}")
        m1, log = guide(env.G, base, tsam(env, 3000.0, guided=10, runaway_bound=False), verify=True)  # step 0 of 3
        guided = sample(env, m1, name)
        if [r.step for r in log.steps] != [0]:
            failures.append(f"{name}: guided steps {[r.step for r in log.steps]}, expected [0]")
            continue
        effect = (guided - stock).abs().max()
        if not effect > 1e-2:
            failures.append(f"{name}: the update did not reach the result (max change {effect:.3g})")
        ref = sample(env, restarted(base, log.steps[0].x_after, chunk_first=not exact), name)
        if not torch.equal(guided, ref):
            failures.append(f"{name}: differs from the sampler restarted from x'0 by {(guided - ref).abs().max():.3g}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["euler", "heun", "ddim"])
def test_updates_at_several_steps_persist(env, name):
    """Guided steps 0 and 1: the result equals the deterministic stock sampler restarted from x'₁ at step 1."""
    base = nonlinear(env.model)
    m, log = guide(env.G, base, tsam(env, 3000.0, guided=30, runaway_bound=False), verify=True)  # steps 0, 1 of 3
    guided = sample(env, m, name)
    assert [r.step for r in log.steps] == [0, 1]
    assert not torch.equal(log.steps[1].x_before, log.steps[0].x_before)
    ref = sample(env, restarted(base, log.steps[1].x_after, skip=1), name)
    assert torch.equal(guided, ref)


@pytest.mark.parametrize("variant", ["paper", "cosine"])
def test_loss_after_each_update_is_lower_at_the_same_sigma(env, variant):
    m, log = guide(env.G, env.model, tsam(env, 10.0, variant=variant), verify=True)
    sample(env, m, "euler", size=128, steps=6, batch=2)
    assert len(log.steps) == 4                               # 30 of 50 → 4 of 6 steps (rounded)
    for rec in log.steps:
        assert torch.all(rec.loss_after < rec.loss_before), (rec.step, rec.loss_before, rec.loss_after)


def test_refinement_lowers_the_loss_and_counts_iterations(env):
    import comfy.utils

    calls = []
    old_hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        m, log = guide(env.G, env.model, tsam(env, 10.0, refine="official"), verify=True)
        sample(env, m, "euler", size=128, steps=5)
    finally:
        comfy.utils.set_progress_bar_global_hook(old_hook)
    refined = [r for r in log.steps if r.iterations is not None]
    assert [r.step for r in refined] == [0, 1, 2]            # 0/10/20 of 50 → 0, 1, 2 of 5
    first = refined[0]
    assert int(first.iterations[0]) in (20, 30) and len(first.losses) == int(first.iterations[0]) + 1
    assert first.loss_final < first.loss_before
    # one bar for the whole run: 5 steps + 3 refinement steps × at most 30 iterations, only moving forward; the
    # refinement iterations are counted on it (step 0's run from 1 to its count) and it ends full
    assert calls and {total for _, total in calls} == {5 + 3 * 30}, calls
    values = [value for value, _ in calls]
    assert values == sorted(values) and values[-1] == 95
    assert (int(first.iterations[0]), 95) in calls and (1, 95) in calls


@pytest.mark.heavy
def test_a_batch_of_two_equals_two_batches_of_one(env):
    """Each sample gets its own gradient and none is lost. Stock sampling on this CPU is itself not bit-identical
    between batch sizes, so the comparison is against that baseline."""
    guidance = tsam(env, 10.0)

    def run(latent, guided):
        m = guide(env.G, env.model, guidance)[0] if guided else env.model
        return sample(env, m, "dpmpp_2m", latent=latent, steps=6, seed=7)

    pair = {"samples": torch.zeros(2, 4, 16, 16)}
    singles = [{"samples": torch.zeros(1, 4, 16, 16), "batch_index": [i]} for i in range(2)]
    stock2, guided2 = run(pair, False), run(pair, True)
    for i in range(2):
        stock1, guided1 = run(singles[i], False)[0], run(singles[i], True)[0]
        baseline = (stock2[i] - stock1).abs().max()
        assert (guided2[i] - guided1).abs().max() <= 5 * baseline + 1e-3
        assert (guided2[i] - stock2[i]).abs().max() > 1000 * (baseline + 1e-3)


def test_users_model_latent_and_conditioning_are_untouched(env):
    model, pos = env.model, env.pos
    options_before = copy.deepcopy(model.model_options)
    wrappers_before = {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()}
    weights_before = {k: v.clone() for k, v in list(model.model.diffusion_model.state_dict().items())[:20]}
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    latent_before, cond_before = latent["samples"].clone(), pos[0][0].clone()
    grad_before = torch.is_grad_enabled()
    m, _ = guide(env.G, model, tsam(env, 10.0, refine="official"))
    sample(env, m, "euler", latent=latent, steps=3)
    assert torch.is_grad_enabled() == grad_before
    assert model.model_options == options_before
    assert {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()} == wrappers_before
    assert torch.equal(latent["samples"], latent_before) and set(latent) == {"samples"}
    assert torch.equal(pos[0][0], cond_before)
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights_before.items())


def test_inpainting_mask_restricts_the_update(env):
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., :, :64] = 1.0                                  # left half is repainted
    latent = {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), "noise_mask": mask}
    m, log = guide(env.G, env.model, tsam(env, 10.0), verify=True)
    sample(env, m, "euler", latent=latent, steps=4)
    for rec in log.steps:
        change = (rec.x_after - rec.x_before).abs()
        assert change[..., :, 8:].max() == 0                 # outside the mask: untouched
        assert change[..., :, :8].max() > 0


def test_cfg_one_still_guides(env):
    m, log = guide(env.G, env.model, tsam(env, 10.0), verify=True)
    sample(env, m, "euler", size=128, steps=4, cfg=1.0)
    assert log.steps and all(torch.all(r.loss_after < r.loss_before) for r in log.steps)


def test_controlnet_in_the_graph_is_made_safe(env, host):
    """A ControlNet applied to the positive prompt: its residuals enter the gradient pass detached."""
    import comfy.controlnet
    import tiny_checkpoint

    path = host.base_dir / "models" / "controlnet" / "tiny_controlnet.safetensors"
    if not path.exists():
        tiny_checkpoint.build_controlnet(str(path))
    control = comfy.controlnet.load_controlnet(str(path))
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(1))
    apply = host.node_class("ControlNetApplyAdvanced")()
    pos_c, neg_c = apply.apply_controlnet(env.pos, env.neg, control, hint, 1.0, 0.0, 1.0, vae=None)
    plain = sample(env, env.model, "euler", size=128, steps=3)
    with_control = sample(env, env.model, "euler", size=128, steps=3, positive=pos_c)
    assert not torch.equal(plain, with_control)              # the ControlNet does act
    m, log = guide(env.G, env.model, tsam(env, 10.0), verify=True)
    sample(env, m, "euler", size=128, steps=3, positive=pos_c)
    assert log.steps and all(torch.all(r.loss_after < r.loss_before) for r in log.steps)
    m, log_without = guide(env.G, env.model, tsam(env, 10.0))
    sample(env, m, "euler", size=128, steps=3)
    assert log.steps[0].loss_before != log_without.steps[0].loss_before   # the residuals reach the gradient pass


def random_lora(model, rank=4, scale=0.5, seed=2) -> dict:
    """A LoRA in ComfyUI's generic key format on every attn2 to_q/to_k/to_v of the UNet (random up/down)."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for key, weight in model.model.diffusion_model.state_dict().items():
        if "attn2.to_" in key and key.endswith(".weight") and "to_out" not in key:
            out_f, in_f = weight.shape
            name = "diffusion_model." + key[:-len(".weight")]
            lora[name + ".lora_up.weight"] = torch.randn(out_f, rank, generator=g) * scale / rank ** 0.5
            lora[name + ".lora_down.weight"] = torch.randn(rank, in_f, generator=g) / in_f ** 0.5
    return lora


def test_a_lora_reaches_the_gradient_pass_and_every_model_stays_as_it_was(env):
    """LoRA patches live in the shared model's weights while a clone samples; the gradient pass must see them, and
    sampling the base model or the LoRA model afterwards must give exactly what it gave before."""
    import comfy.sd

    lora_model, _ = comfy.sd.load_lora_for_models(env.model, None, random_lora(env.model), 1.0, 0.0)
    assert len(lora_model.patches) > 0
    base_before = sample(env, env.model, "euler", size=128, steps=3)
    lora_before = sample(env, lora_model, "euler", size=128, steps=3)
    assert not torch.equal(base_before, lora_before)                       # the LoRA does act

    m, log_lora = guide(env.G, lora_model, tsam(env, 0.0))
    assert torch.equal(sample(env, m, "euler", size=128, steps=3), lora_before)   # strength 0 = stock, with LoRA
    m, log_base = guide(env.G, env.model, tsam(env, 0.0))
    sample(env, m, "euler", size=128, steps=3)
    assert not torch.equal(log_lora.steps[0].loss_before, log_base.steps[0].loss_before)   # the pass saw the LoRA

    m, log = guide(env.G, lora_model, tsam(env, 10.0), verify=True)
    guided = sample(env, m, "euler", size=128, steps=3)
    assert not torch.equal(guided, lora_before)
    assert all(torch.all(r.loss_after < r.loss_before) for r in log.steps)
    assert torch.equal(sample(env, env.model, "euler", size=128, steps=3), base_before)
    assert torch.equal(sample(env, lora_model, "euler", size=128, steps=3), lora_before)


def test_interrupt_stops_guidance_and_restores_everything(env):
    import comfy.model_management
    import comfy.sample
    import comfy.samplers

    sampler = comfy.samplers.sampler_object("euler")
    original = sampler.sampler_function
    m, _ = guide(env.G, env.model, tsam(env, 10.0, refine="official"))
    options_before = copy.deepcopy(m.model_options)
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "normal", 4)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            comfy.sample.sample_custom(m, noise, 7.0, sampler, sigmas, env.pos, env.neg, torch.zeros_like(noise))
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert sampler.sampler_function is original
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert m.model_options == options_before


def test_other_samplers_than_ksampler_get_the_guidance_through_the_model_patch(env, host, tiny_ckpt):
    """Apply Guidance + the stock KSampler, KSamplerAdvanced and SamplerCustomAdvanced; and the Guided KSampler
    gives the same latent as Apply Guidance + KSampler."""
    common = {
        **tsam_graph(tiny_ckpt),
        "a": {"class_type": "AttentionAlignApplyGuidance", "inputs": {"model": ["c", 0], "guidance": ["g", 0]}},
        "l": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
    }
    ks = {"seed": 5, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "positive": ["t", 2],
          "negative": ["n", 0], "latent_image": ["l", 0]}
    graphs = {
        "KSampler": {"s": {"class_type": "KSampler", "inputs": {"model": ["a", 0], "denoise": 1.0, **ks}}},
        "KSamplerAdvanced": {"s": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["a", 0], "add_noise": "enable", "noise_seed": 5, "start_at_step": 0, "end_at_step": 10000,
            "return_with_leftover_noise": "disable", **{k: v for k, v in ks.items() if k != "seed"}}}},
        "SamplerCustomAdvanced": {
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
            "guider": {"class_type": "CFGGuider", "inputs": {"model": ["a", 0], "positive": ["t", 2],
                                                             "negative": ["n", 0], "cfg": 7.0}},
            "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["a", 0], "scheduler": "normal",
                                                                  "steps": 4, "denoise": 1.0}},
            "s": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0],
                "latent_image": ["l", 0]}}},
    }
    plain = host.run({**common, "s": {"class_type": "KSampler", "inputs": {"model": ["c", 0], "denoise": 1.0, **ks}}})
    results = {}
    for name, extra in graphs.items():
        out = host.run({**common, **extra}, fresh=True)
        log = out["a"][1].records[-1]                                  # Apply Guidance's board: this run's record
        assert [r.step for r in log.steps] == [0, 1], name           # 30 of 50 → 2.4 → steps 0, 1 of 4
        results[name] = out["s"][0]["samples"]
        assert not torch.allclose(results[name], plain["s"][0]["samples"]), name
    assert torch.equal(results["KSampler"], results["KSamplerAdvanced"])
    assert torch.equal(results["KSampler"], results["SamplerCustomAdvanced"])
    guided = host.run({**common, "s": {"class_type": "AttentionAlignGuidedKSampler", "inputs": {
        "model": ["c", 0], "denoise": 1.0, "guidance": ["g", 0], **ks}},
        "v": {"class_type": "AttentionAlignVisualize", "inputs": {
            "attention_maps": ["s", 1], "text_attention": ["t", 0], "guidance_log": ["s", 2], "words": "car, clock",
            "level": 32, "columns": 5}}})
    assert torch.equal(guided["s"][0]["samples"], results["KSampler"])
    maps, log = guided["s"][1], guided["s"][2]
    assert maps.levels() == [32] and maps.mean(32).shape == (1, 77, 4, 4)
    assert len(log.steps) == 2 and log.sampler == "euler" and log.path == "in_place"
    image, labels = guided["v"]
    assert labels.splitlines() == ["car", "clock", "T", "S", "loss"] and image.shape == (1, 128, 5 * 128 + 16, 3)
    plot = image[0, :, 4 * 132:]
    red = (plot[..., 0] > 0.6) & (plot[..., 1] < 0.4) & (plot[..., 2] < 0.4)
    assert red.sum() > 20                                        # the loss curve is drawn


def test_mismatched_prompt_and_bad_levels_are_refused(env, host, tiny_ckpt):
    from headless import ExecutionFailed

    graph = {
        **tsam_graph(tiny_ckpt, strength=1.0, positive_text="a dog on a sofa"),
        "l": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "s": {"class_type": "AttentionAlignGuidedKSampler", "inputs": {
            "model": ["c", 0], "seed": 1, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["n", 0], "negative": ["n", 0], "latent_image": ["l", 0], "denoise": 1.0,
            "guidance": ["g", 0]}},
    }
    with pytest.raises(ExecutionFailed, match="positive: the positive conditioning is not the prompt"):
        host.run(graph)
    graph["s"]["inputs"]["positive"] = ["t", 2]
    graph["g"]["inputs"]["level"] = 64
    with pytest.raises(ExecutionFailed, match="level: this model has no cross-attention at image ÷64; its levels are "
                                              "8, 16, 32"):
        host.run(graph)
    graph["g"]["inputs"]["level"] = 32
    graph["t"]["inputs"]["text"] = "cat"
    with pytest.raises(ExecutionFailed, match="T-SAM compares pairs of prompt tokens, but 'cat' has 1 token"):
        host.run(graph)


@pytest.mark.heavy
def test_truncated_gradient_pass_gives_the_same_loss_and_gradient(env, host):
    """The fast path stops the UNet after the last layer at the loss's level; nothing after it can change the loss,
    so losses and updated latents (which carry the gradient) are bit-identical, and the later layers never run."""
    backend, attach = host.pack_module("nodes.host.backend"), host.pack_module("nodes.host.attach")

    class GradPassLayers:
        def __init__(self):
            self.keys = []

        def wants(self, call):
            if call.grad_pass:
                self.keys.append(call.key)
            return False

    runs = {}
    for truncate in (True, False):
        m, log = guide(env.G, env.model, tsam(env, 10.0, refine="official"), verify=True, truncate=truncate)
        seen = GradPassLayers()
        spy = SimpleNamespace(name="spy", edits_attention=False, begin=lambda info, layers, seen=seen: SimpleNamespace(
            observers=(seen,), editors=(), end=lambda stamp: None))
        model_backend = backend.backend_of(m)
        attach.attach(m, spy, model_backend, backend.level_map(model_backend.layers()), kind="test")
        sample(env, m, "euler", size=128, steps=3, batch=2)
        runs[truncate] = (log, seen.keys)
    (fast, fast_keys), (full, full_keys) = runs[True], runs[False]
    assert len(fast.steps) == len(full.steps) == 2 and len(fast.steps[0].losses) > 1
    for a, b in zip(fast.steps, full.steps):
        assert all(torch.equal(x, y) for x, y in zip(a.losses, b.losses))
        assert torch.equal(a.loss_after, b.loss_after) and torch.equal(a.x_after, b.x_after)
    level_layers = [layer.key for layer in backend.backend_of(env.model).layers() if layer.level == 32]
    order = list(dict.fromkeys(full_keys))                  # every layer, in forward order
    last = order.index(level_layers[-1])
    assert set(fast_keys) == set(order[:last + 1])           # everything up to the loss's last layer, nothing after
    assert ("output", 5, 0) in order[last + 1:]
