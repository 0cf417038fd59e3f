"""The UI-format workflows in example_workflows/: in step with the node schemas, and runnable headless."""
import io
import json
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.heavy  # runs every example workflow

WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))


def test_every_workflow_is_listed_in_the_generator():
    import build_workflows

    assert sorted(build_workflows.WORKFLOWS) == [p.name for p in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_file_matches_the_node_schemas(host, path):
    """Widget values are positional: a node whose inputs changed would shift them. The file must be what the
    generator writes from today's schemas, and its links must connect matching types."""
    import build_workflows

    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(build_workflows.ui_workflow(path.name, host)))
    nodes = {n["id"]: n for n in on_disk["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in on_disk["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind
        assert nodes[dst]["inputs"][dst_slot]["type"] == kind, (link_id, nodes[dst]["type"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_runs_headless_on_the_tiny_model(host, tiny_ckpt, path):
    from PIL import Image
    from run_workflow import ProgressPrinter, tiny_prompt

    # on the tiny model an SDXL file is its SD1.5 twin's graph, which ComfyUI would answer from its cache (the saved
    # PNGs would carry the twin's workflow): the SDXL files run at 160 px. Flux / SD3.5 files run on tiny DiTs.
    size = 160 if path.stem.endswith("_sdxl") else 128
    ui, prompt = tiny_prompt(json.loads(path.read_text()), host, size=size, steps=3, ckpt=tiny_ckpt)
    printer = ProgressPrinter(host, out=io.StringIO())
    printer.start(prompt)
    try:
        host.run(prompt, workflow=ui)
    finally:
        printer.close()
    saved = [img for ui in host.ui_outputs.values() for img in ui.get("images", []) if img["type"] == "output"]
    assert saved, "the workflow saved no image"
    for img in saved:
        png = Path(host.base_dir) / "output" / img["subfolder"] / img["filename"]
        assert png.stat().st_size > 1000
        text = Image.open(png).text               # the PNG carries the graph that made it, as the frontend's do
        assert json.loads(text["prompt"]) == prompt and json.loads(text["workflow"]) == ui
    # the headless runner reports each sampler's progress, never going back
    log = printer.out.getvalue()
    assert "…" in log and "/" in log and "%" in log
    for node in {n for n, _, _ in printer.events}:
        values = [(v, t) for n, v, t in printer.events if n == node]
        assert len({t for _, t in values}) == 1, values
        assert [v for v, _ in values] == sorted(v for v, _ in values), values


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_has_its_thumbnail(path):
    """The template browser shows <name>.jpg beside <name>.json: it must be there, a square JPEG of 256–1024 px."""
    import pack_assets

    pack_assets.check_thumbnail(path.with_suffix(".jpg"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_note_says_what_to_change_for_its_family(path):
    import build_workflows

    graph, family = build_workflows.WORKFLOWS[path.name]
    f = {**build_workflows.FAMILIES, **build_workflows.DIT}[family]
    nodes = json.loads(path.read_text())["nodes"]
    (note,) = [n for n in nodes if n["type"] == "Note"]
    text = note["widgets_values"][0]
    assert f["ckpt"] in text and f"{f['size']}×{f['size']}" in text and "Steps:" in text and "Words:" in text
    sizes = {n["widgets_values"][0] for n in nodes if n["type"] in ("EmptyLatentImage", "EmptySD3LatentImage")}
    assert sizes == {f["size"]}, (path.name, sizes)


def test_there_are_sdxl_workflows_for_every_graph():
    import build_workflows

    stems = {p.stem for p in WORKFLOWS}
    for graph in build_workflows.MAKERS:
        assert {f"{graph}_sd15", f"{graph}_sdxl", f"{graph}_toy"} <= stems, graph
    for graph in build_workflows.DIT_MAKERS:                     # the graphs that run on Flux and SD3.5
        assert {f"{graph}_flux", f"{graph}_sd35"} <= stems, graph
