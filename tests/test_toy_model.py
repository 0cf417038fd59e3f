"""The toy text-to-image model: trained for a few steps here (seconds), loaded through the Load Toy Model node into
ComfyUI's own classes, sampled by the stock KSampler in a normal graph; bad files refused; training deterministic."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_RUN = dict(vae_steps=2, vae_batch=2, vae_crop=32, vae_full_steps=1, vae_full_batch=1, pool=8, steps=3, batch=4,
                threads=1, progress=False, log_every=1)
NODE = "AttentionAlignLoadToyModel"


def _train(out: Path, seed: int = 0) -> dict:
    from toy.train import train

    return train(out, seed=seed, **TINY_RUN)


@pytest.fixture(scope="module")
def toy_file(host):
    """A 3-step toy model in the host's models/checkpoints; returns its checkpoint name."""
    name = "toy_test.safetensors"
    path = host.checkpoint_path(name)
    if not path.exists():
        _train(path)
    return name


@pytest.fixture(scope="module")
def loader(host):
    return host.pack_module("nodes.toy_loader").LoadToyModel


@pytest.fixture(scope="module")
def loaded(loader, toy_file):
    return tuple(loader.execute(toy_file).result)


def test_loader_builds_comfyui_classes_with_the_files_weights(host, loaded, toy_file):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.model_sampling
    import comfy.sd
    import comfy.sd1_clip
    import safetensors.torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    model, clip, vae = loaded
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert isinstance(model.model, comfy.model_base.BaseModel)
    assert isinstance(model.model.model_sampling, comfy.model_sampling.EPS)
    assert isinstance(model.model.diffusion_model, UNetModel)
    assert type(model.model.latent_format).__name__ == "SD15"
    assert isinstance(clip, comfy.sd.CLIP) and isinstance(clip.cond_stage_model, comfy.sd1_clip.SD1ClipModel)
    assert isinstance(vae, comfy.sd.VAE) and isinstance(vae.first_stage_model, AutoencoderKL)
    assert vae.downscale_ratio == 8 and vae.latent_channels == 4

    sd = safetensors.torch.load_file(str(host.checkpoint_path(toy_file)))
    w = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    torch.testing.assert_close(model.model.diffusion_model.state_dict()[w].float(),
                               sd["model.diffusion_model." + w].float(), rtol=0, atol=0)
    t = "text_model.encoder.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(clip.cond_stage_model.clip_l.transformer.state_dict()[t].float(),
                               sd["cond_stage_model.transformer." + t].float(), rtol=0, atol=0)
    v = "decoder.conv_out.weight"
    torch.testing.assert_close(vae.first_stage_model.state_dict()[v].float(), sd["first_stage_model." + v].float(),
                               rtol=0, atol=0)


def test_text_encoder_uses_comfyuis_real_clip_tokenizer(loaded):
    import comfy.sd1_clip

    _model, clip, _vae = loaded
    assert isinstance(clip.tokenizer, comfy.sd1_clip.SD1Tokenizer)
    vocab = clip.tokenizer.clip_l.tokenizer.get_vocab()
    assert len(vocab) == 49408
    ids = [t for t, _w in clip.tokenize("a red circle next to a star")["l"][0]]
    words = ["a", "red", "circle", "next", "to", "a", "star"]
    assert ids[:9] == [49406] + [vocab[w + "</w>"] for w in words] + [49407]
    assert len(ids) == 77
    cond = clip.encode_from_tokens(clip.tokenize("a red circle"))
    assert cond.shape == (1, 77, 128)


def test_unet_has_cross_attention_at_two_levels_with_8x8_maps_at_level_16(host, loaded):
    backend = host.pack_module("nodes.host.backend")
    layers = backend.backend_of(loaded[0]).layers()
    by_level: dict[int, int] = {}
    for layer in layers:
        by_level[layer.level] = by_level.get(layer.level, 0) + 1
    assert by_level == {8: 3, 16: 4}
    assert backend.map_size_at((16, 16), 16) == (8, 8)


def test_stock_ksampler_and_capture_run_on_it_in_a_graph(host, toy_file, loader, monkeypatch):
    monkeypatch.setitem(host.nodes.NODE_CLASS_MAPPINGS, NODE, loader)
    graph = {
        "ckpt": {"class_type": NODE, "inputs": {"ckpt_name": toy_file}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a red circle and a star"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "capture": {"class_type": "AttentionAlignCaptureCrossAttention",
                    "inputs": {"model": ["ckpt", 0], "levels": 16, "record_steps": False}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["capture", 0], "seed": 1, "steps": 3, "cfg": 4.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
    }
    out = host.run(graph, fresh=True)
    latent = out["sample"][0]["samples"]
    assert latent.shape == (1, 4, 16, 16) and torch.isfinite(latent).all()
    image = out["decode"][0]
    assert image.shape == (1, 128, 128, 3) and float(image.std()) > 0
    rec = out["capture"][1].records[-1]
    assert rec.levels() == [16] and rec.size(16) == (8, 8)     # image ÷16
    assert rec.mean(16).shape == (1, 77, 8, 8)


def test_loader_refuses_a_file_that_is_not_a_toy_model(host, loader, tmp_path):
    import safetensors.torch

    path = host.checkpoint_path("not_a_toy.safetensors")
    safetensors.torch.save_file({"foo.bar": torch.zeros(3), "baz": torch.ones(2, 2)}, str(path))
    with pytest.raises(ValueError, match=r"ckpt_name: .*not_a_toy\.safetensors is not a toy model.*"
                                         r"metadata entry 'attention-align-toy'"):
        loader.execute("not_a_toy.safetensors")
    garbage = host.checkpoint_path("garbage.safetensors")
    garbage.write_bytes(b"this is not safetensors")
    with pytest.raises(ValueError, match=r"garbage\.safetensors is not a toy model: cannot read it"):
        loader.execute("garbage.safetensors")


def test_loader_refuses_a_toy_file_whose_tensors_do_not_match_its_config(host, loader, toy_file):
    import json

    import safetensors
    import safetensors.torch

    src = host.checkpoint_path(toy_file)
    with safetensors.safe_open(str(src), framework="pt") as f:
        info = json.loads(f.metadata()["attention-align-toy"])
    sd = safetensors.torch.load_file(str(src))
    info["config"]["unet"]["model_channels"] = 96        # the tensors were trained at 64
    bad = host.checkpoint_path("toy_bad_config.safetensors")
    safetensors.torch.save_file(sd, str(bad), metadata={"attention-align-toy": json.dumps(info)})
    with pytest.raises(ValueError, match=r"toy_bad_config\.safetensors: the UNet tensors do not match"):
        loader.execute("toy_bad_config.safetensors")


@pytest.mark.heavy
def test_training_is_deterministic_under_a_seed_and_depends_on_it(host, tmp_path):
    import safetensors.torch

    runs = {name: _train(tmp_path / f"{name}.safetensors", seed=seed)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    a, b, c = (safetensors.torch.load_file(str(tmp_path / f"{n}.safetensors")) for n in "abc")
    assert runs["a"]["sha256"] == runs["b"]["sha256"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert runs["c"]["sha256"] != runs["a"]["sha256"]
    log = (tmp_path / "a.safetensors.log.jsonl").read_text().splitlines()
    assert sum('"phase": "diffusion"' in line for line in log) == TINY_RUN["steps"]
    assert '"phase": "done"' in log[-1]


def test_shipped_file_records_the_command_the_defaults_give(monkeypatch):
    """README promises that the trainer the shipped file names (``toy.train`` for v1, ``toy.train_v2`` for v2), run
    with its defaults, reproduces the committed file: the command it would record (and so every weight-affecting
    default) must equal the one stored in the file, and the file's SHA-256 the logged one."""
    import hashlib
    import importlib
    import inspect
    import json

    from safetensors import safe_open

    shipped = Path(__file__).resolve().parents[1] / "toy" / "weights" / "toy_shapes.safetensors"
    with safe_open(str(shipped), "pt") as f:
        meta = json.loads(f.metadata()["attention-align-toy"])
    tt = importlib.import_module(meta.get("trainer", "toy.train"))
    seen = {}

    def record(out, **kwargs):
        seen.update(kwargs)
        return {}

    record.__signature__ = inspect.signature(tt.train)
    monkeypatch.setattr(tt, "train", record)
    tt.main([])
    assert seen["command"] == meta["command"] and meta["command"].startswith(f"python -m {tt.__name__} ")
    log = (shipped.parent / "toy_shapes.train_log.jsonl").read_text().splitlines()
    done = json.loads(log[-1])
    assert done["phase"] == "done"
    assert done["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
