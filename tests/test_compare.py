"""The comparison runner's pure parts: prompt sets, method configurations, job prompts, the manifest, sharding over
servers that fail — with fake backends (no ComfyUI)."""
from __future__ import annotations

import json
import threading

import compare
import prompt_sets
import pytest
from prompt_sets import PromptItem, PromptSetError, read_prompt_set


# ---------------------------------------------------------------------------------------------- prompt sets
def test_plain_and_compbench_files_are_one_prompt_per_line(tmp_path):
    f = tmp_path / "color_val.txt"
    f.write_text("a red car and a blue bench\n\n  a green apple \n")
    items = read_prompt_set(str(f))
    assert [(i.index, i.text, i.subjects) for i in items] == [(0, "a red car and a blue bench", ""),
                                                              (1, "a green apple", "")]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptSetError, match="empty.txt: no prompt in it"):
        read_prompt_set(str(tmp_path / "empty.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PromptSetError, match="bin.txt: not a UTF-8 text file"):
        read_prompt_set(str(tmp_path / "bin.txt"))
    with pytest.raises(PromptSetError, match="nope.txt: no such file"):
        read_prompt_set(str(tmp_path / "nope.txt"))


def test_geneval_metadata_gives_typed_words_where_the_prompt_names_the_classes(tmp_path):
    lines = [{"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                               {"class": "traffic light", "count": 1, "color": "green"}],
              "prompt": "a photo of a red car and a green traffic light"},
             {"tag": "counting", "include": [{"class": "dog", "count": 3}], "prompt": "a photo of three dogs"}]
    f = tmp_path / "evaluation_metadata.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    a, b = read_prompt_set(str(f))
    assert (a.subjects, a.groups) == ("car, light", "red car; green light") and a.meta == lines[0]
    assert (b.subjects, b.groups) == ("", "") and b.meta["tag"] == "counting"     # "dogs" ≠ "dog": automatic
    f.write_text(json.dumps(lines[0]) + "\n{not json\n")
    with pytest.raises(PromptSetError, match=r"evaluation_metadata.jsonl:2: not a GenEval metadata line"):
        read_prompt_set(str(f))


def test_builtin_sets_follow_their_templates():
    ae = read_prompt_set("builtin:ae")
    assert len(ae) == 66 + 144 + 66 and len({i.text for i in ae}) == len(ae)
    assert read_prompt_set("builtin:ae_animals")[0].text == "a cat and a dog"
    assert read_prompt_set("builtin:ae_animals")[0].subjects == "cat, dog"
    animal_object = read_prompt_set("builtin:ae_animal_object")[0]
    colour = animal_object.text.split()[-2]
    assert colour in prompt_sets.AE_COLOURS and animal_object.groups == f"{colour} backpack"
    objects = read_prompt_set("builtin:ae_objects")
    assert all(len(i.groups.split("; ")) == 2 for i in objects)
    same = [i for i in objects if i.text.split()[1] == i.text.split()[-2]]           # the same colour twice
    assert all("#2" in i.groups for i in same)
    dvmp = read_prompt_set("builtin:dvmp:50")
    assert len(dvmp) == 50 and dvmp == read_prompt_set("builtin:dvmp:50")             # seeded
    for item in dvmp:
        for noun in item.subjects.split(", "):
            assert noun.split("#")[0] in item.text
    with pytest.raises(PromptSetError, match="builtin:dvmp:x: the count"):
        read_prompt_set("builtin:dvmp:x")
    with pytest.raises(PromptSetError, match="builtin:nope: unknown built-in set"):
        read_prompt_set("builtin:nope")


def test_the_toy_set_is_the_benchmarks_held_out_set_with_its_structure():
    """builtin:toy holds the held-out prompts of the world the shipped toy model was trained in."""
    from toy.model import SHIPPED_FILE, world_of
    from toy.scenes import WORLDS, evaluation_prompts

    items = read_prompt_set("builtin:toy")
    held = evaluation_prompts(split=WORLDS[world_of(SHIPPED_FILE)].split)
    assert [i.text for i in items] == [p.caption for p in held]
    assert items[0].meta["mentions"] == [[m.shape, m.colour] for m in held[0].mentions]


# ------------------------------------------------------------------------------------------ configurations
SCHEMA = {
    "AttentionAlignTSAM": {"input": {"required": {
        "text_attention": ["TEXT_ATTENTION", {}], "loss": [["paper", "cosine"], {"default": "paper"}],
        "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0}],
        "level": ["INT", {"default": 32, "min": 8, "max": 64}]}},
        "input_order": {"required": ["text_attention", "loss", "strength", "level"]}, "output_node": False},
    "AttentionAlignAttendExcite": {"input": {"required": {
        "text_attention": ["TEXT_ATTENTION", {}], "subjects": ["STRING", {"default": ""}],
        "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0}],
        "level": ["INT", {"default": 32, "min": 8, "max": 64}]}},
        "input_order": {"required": ["text_attention", "subjects", "strength", "level"]}, "output_node": False},
    "SaveImage": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}},
                  "input_order": {"required": ["images", "filename_prefix"]}, "output_node": True},
}


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def test_method_configurations_are_checked_before_any_job(tmp_path):
    configs = compare.read_configs(write(tmp_path, "m.json", [
        {"method": "unguided"}, {"method": "tsam", "strength": 2.0, "name": "tsam@2"},
        {"method": "attend_excite", "inputs": {"level": 16}}]))
    assert [(c.name, c.node, c.inputs) for c in configs] == [
        ("unguided", None, {}), ("tsam@2", "AttentionAlignTSAM", {"strength": 2.0}),
        ("attend_excite", "AttentionAlignAttendExcite", {"level": 16})]
    yaml_configs = compare.read_configs(write(tmp_path, "m.yaml", "- method: tsam\n  inputs: {loss: cosine}\n"))
    assert yaml_configs[0].inputs == {"loss": "cosine"}
    schemas = compare.Schemas(SCHEMA)
    compare.validate_configs(configs, schemas)
    cases = [([{"method": "magic"}], "unknown method 'magic'"),
             ([{"method": "tsam", "colour": 1}], r"unknown keys \['colour'\]"),
             ([{"method": "tsam"}, {"method": "tsam"}], "name 'tsam' must be unique"),
             ([{"method": "unguided", "strength": 1}], "'unguided' takes no inputs"),
             ("{", "does not parse as JSON"), ([], "non-empty list")]
    for data, message in cases:
        with pytest.raises(compare.CompareError, match=message):
            compare.read_configs(write(tmp_path, "bad.json", data))
    for inputs, message in [({"loss": "l2"}, r"loss = 'l2' is not one of \['paper', 'cosine'\]"),
                            ({"strength": 500.0}, r"strength = 500.0 is not allowed; .* in \[0.0, 100.0\]"),
                            ({"level": 16.5}, "takes an integer"),
                            ({"scale": 1.0}, "'scale' is not an input of AttentionAlignTSAM; its inputs are loss, "
                                             "strength, level")]:
        with pytest.raises(compare.CompareError, match=message):
            compare.validate_configs([compare.MethodConfig("x", "tsam", inputs)], schemas)


def test_seeds_and_shards_parse_or_say_what_is_allowed():
    assert compare.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    for bad in ("a", "1,1", "-1", ""):
        with pytest.raises(compare.CompareError, match="--seeds"):
            compare.parse_seeds(bad)
    assert compare.parse_shard("1/4") == (1, 4) and compare.parse_shard("") is None
    with pytest.raises(compare.CompareError, match="--shard: '4/4' must be K/N"):
        compare.parse_shard("4/4")


# ----------------------------------------------------------------------------------------------- job prompts
def guided_template():
    prompt = {
        "1": {"class_type": "AttentionAlignLoadToyModel", "inputs": {"ckpt_name": "attention-align/toy.safetensors"}},
        "2": {"class_type": "AttentionAlignTextSelfAttention", "inputs": {"clip": ["1", 1], "text": "x"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "AttentionAlignTSAM", "inputs": {"text_attention": ["2", 0], "loss": "paper",
                                                             "strength": 1.0, "level": 16}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 4}},
        "6": {"class_type": "AttentionAlignGuidedKSampler", "inputs": {
            "model": ["1", 0], "seed": 5, "positive": ["2", 2], "negative": ["3", 0], "latent_image": ["5", 0],
            "guidance": ["4", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "x"}},
    }
    return compare.Template(prompt, "2", "4", "6", "6", "7", ("1", "CheckpointLoaderSimple", "x.safetensors"))


def test_a_job_prompt_sets_prompt_seed_method_and_replaces_the_outputs():
    t, schemas = guided_template(), compare.Schemas(SCHEMA)
    item = PromptItem(3, "a red circle and a blue square", "circle, square", "red circle; blue square")
    p, save, rep = compare.job_prompt(t, schemas, item, 11, compare.MethodConfig(
        "ae", "attend_excite", {"strength": 2.0}), "pre")
    assert p["2"]["inputs"]["text"] == item.text and p["6"]["inputs"]["seed"] == 11
    assert p["5"]["inputs"]["batch_size"] == 1 and "8" not in p                       # template's output removed
    assert p["4"] == {"class_type": "AttentionAlignAttendExcite", "inputs": {
        "text_attention": ["2", 0], "subjects": "circle, square", "strength": 2.0, "level": 16}}   # level kept
    assert p[save] == {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "pre"}}
    assert p[rep]["inputs"]["attention_maps"] == ["6", 1] and p[rep]["inputs"]["guidance_log"] == ["6", 2]
    assert t.prompt["2"]["inputs"]["text"] == "x"                                     # the template is untouched
    p, save, rep = compare.job_prompt(t, schemas, item, 11, compare.MethodConfig("unguided", "unguided"), "pre")
    assert p["6"]["class_type"] == "KSampler" and "guidance" not in p["6"]["inputs"] and "4" not in p
    cap = p["6"]["inputs"]["model"][0]
    assert p[cap]["class_type"] == "AttentionAlignCaptureCrossAttention" and p[cap]["inputs"]["model"] == ["1", 0]
    assert p[rep]["inputs"]["attention_maps"] == [cap, 1] and p[rep]["inputs"]["latent"] == ["6", 0]


def test_a_jobs_prompt_drops_the_templates_other_branches():
    """A Visualize Attention plotting the template's loss (not an output node) would run in-process and fail on a
    method without a loss, or read an output the stock KSampler does not have: only what Save Image and the report
    need stays, and every link points to a node that is there."""
    t, schemas = guided_template(), compare.Schemas(SCHEMA)
    t.prompt["9"] = {"class_type": "AttentionAlignVisualize", "inputs": {
        "guidance_log": ["6", 2], "attention_maps": ["6", 1], "image": ["7", 0]}}
    item = PromptItem(0, "a red circle and a blue square", "circle, square", "red circle; blue square")
    for config in (compare.MethodConfig("unguided", "unguided"), compare.MethodConfig("ae", "attend_excite")):
        p, save, rep = compare.job_prompt(t, schemas, item, 0, config, "pre")
        assert "9" not in p and {save, rep} <= set(p)
        links = [v for n in p.values() for v in n["inputs"].values() if isinstance(v, list) and len(v) == 2]
        assert all(v[0] in p for v in links), links
    assert "9" in t.prompt                                                             # the template is untouched


# ------------------------------------------------------------------------------------- running over servers
class FakeServer:
    """A backend whose runs return a fixed image per job; it can die after some jobs or fail some of them."""

    def __init__(self, name, die_after=None, fail=(), wait_for=None):
        self.name, self.die_after, self.fail, self.ran = name, die_after, set(fail), []
        self.lock, self.down, self.wait_for = threading.Lock(), threading.Event(), wait_for

    def run(self, prompt):
        if self.wait_for is not None:                       # hold the first run until the other server has died
            assert self.wait_for.wait(timeout=30), f"{self.name}: the other server never went down"
            self.wait_for = None
        with self.lock:
            if self.die_after is not None and len(self.ran) >= self.die_after:
                self.down.set()
                raise compare.ServerDown(f"{self.name}: connection refused")
            text = next(n["inputs"]["text"] for n in prompt.values() if n["class_type"].endswith("TextSelfAttention"))
            seed = next(n["inputs"]["seed"] for n in prompt.values() if "seed" in n["inputs"])
            self.ran.append((text, seed))
        if (text, seed) in self.fail:
            raise compare.JobFailed(f"{self.name}: out of memory")
        save = next(k for k, n in prompt.items() if n["class_type"] == "SaveImage")
        rep = next(k for k, n in prompt.items() if n["class_type"] == "AttentionAlignReport")
        return {save: {"images": [{"filename": f"{text}|{seed}"}]},
                rep: {"text": [json.dumps({"loss_first": [1.0], "loss_last": [0.5]})]}}

    def image(self, ref):
        return ref["filename"].encode()                                             # same job ⇒ same bytes


def jobs_for(n_prompts=4, seeds=(0, 1), methods=("unguided", "tsam")):
    items = [PromptItem(i, f"prompt {i}") for i in range(n_prompts)]
    configs = [compare.MethodConfig(m, m) for m in methods]
    return [compare.Job(it, k, s, c) for it in items for k, s in enumerate(seeds) for c in configs]


def run(tmp_path, jobs, servers, **kw):
    manifest = compare.Manifest(tmp_path)
    done = compare.run_jobs(jobs, servers, guided_template(), compare.Schemas(SCHEMA), manifest, tmp_path,
                            progress=False, **kw)
    return manifest, done


def test_jobs_split_over_servers_and_a_dead_servers_job_is_done_elsewhere(tmp_path):
    jobs = jobs_for()
    a = FakeServer("a", die_after=3)
    b = FakeServer("b", wait_for=a.down)        # without this, b could take every job before a has run three
    manifest, done = run(tmp_path, jobs, [a, b])
    assert all(manifest.done(j.key) for j in jobs) and sum(done.values()) == len(jobs)
    assert done["a"] == 3 and done["b"] == len(jobs) - 3
    for j in jobs:                                                                  # every image, exactly once
        assert (tmp_path / j.image_rel).read_bytes() == f"{j.item.text}|{j.seed}".encode()
    assert len(list(tmp_path.glob("images/*/*.png"))) == len(jobs) and not list(tmp_path.glob("images/*/*.part"))


def test_a_failing_job_is_retried_elsewhere_then_recorded_with_the_servers_error(tmp_path):
    jobs = jobs_for(n_prompts=2, seeds=(0,), methods=("tsam",))
    flaky = FakeServer("a", fail={("prompt 0", 0)})
    manifest, _ = run(tmp_path, jobs, [flaky, FakeServer("b")], retries=2)
    assert manifest.done(jobs[0].key) and manifest.done(jobs[1].key)             # b did what a could not
    always = [FakeServer("a", fail={("prompt 0", 0)}), FakeServer("b", fail={("prompt 0", 0)})]
    manifest, _ = run(tmp_path / "two", jobs, always, retries=1)
    rec = manifest.records[jobs[0].key]
    assert rec["status"] == "failed" and len(rec["errors"]) == 2 and "out of memory" in rec["errors"][-1]


def test_a_restarted_run_finishes_only_the_missing_jobs(tmp_path):
    jobs = jobs_for()
    first = FakeServer("a", die_after=5)
    manifest, _ = run(tmp_path, jobs, [first])
    assert sum(manifest.done(j.key) for j in jobs) == 5
    with open(manifest.path, "a") as f:
        f.write('{"job": "cut by a cr')                                          # a line a crash cut short
    again = compare.Manifest(tmp_path)
    todo = [j for j in jobs if not again.done(j.key)]
    second = FakeServer("b")
    compare.run_jobs(todo, [second], guided_template(), compare.Schemas(SCHEMA), again, tmp_path, progress=False)
    assert len(second.ran) == len(jobs) - 5 and all(compare.Manifest(tmp_path).done(j.key) for j in jobs)
    assert len(list(tmp_path.glob("images/*/*.png"))) == len(jobs)


def test_outputs_follow_t2i_compbench_and_geneval_layouts(tmp_path):
    jobs = jobs_for(n_prompts=2, seeds=(3, 9), methods=("tsam",))
    manifest, _ = run(tmp_path, jobs, [FakeServer("a")])
    items = sorted({j.item for j in jobs}, key=lambda i: i.index)
    compare.export_layouts(manifest, items, tmp_path)
    assert (tmp_path / "t2i_compbench/tsam/samples/prompt 1_000001.png").read_bytes() == b"prompt 1|9"
    assert (tmp_path / "geneval/tsam/00001/samples/0000.png").read_bytes() == b"prompt 1|3"
    assert json.loads((tmp_path / "geneval/tsam/00001/metadata.jsonl").read_text()) == {"prompt": "prompt 1"}
    rows = compare.rows_of(manifest)
    assert len(rows) == 4 and rows[0]["loss_first"] == 1.0 and rows[0]["loss_last"] == 0.5
    compare.write_csv(rows, tmp_path / "results.csv")
    assert (tmp_path / "results.csv").read_text().splitlines()[0].startswith("method,prompt_index,prompt,seed")
    summ = compare.summary(rows)
    assert summ["tsam"]["loss_last"][0] == 0.5 and summ["tsam"]["images"] == 4
