"""The UI-format workflows in workflows/: in step with the node schemas, and runnable headless."""
import json
from pathlib import Path

import pytest

from conftest import ROOT

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def test_every_workflow_is_listed_in_the_generator():
    import build_workflows

    assert sorted(build_workflows.WORKFLOWS) == [p.name for p in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_file_matches_the_node_schemas(host, path):
    """Widget values are positional: a node whose inputs changed would shift them. The file must be what the
    generator writes from today's schemas, and its links must connect matching types."""
    import build_workflows
    from headless import api_to_ui

    prompt, positions = build_workflows.WORKFLOWS[path.name]()
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(api_to_ui(prompt, host, positions)))
    nodes = {n["id"]: n for n in on_disk["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in on_disk["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind
        assert nodes[dst]["inputs"][dst_slot]["type"] == kind, (link_id, nodes[dst]["type"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_runs_headless_on_the_tiny_model(host, tiny_ckpt, path):
    from headless import ui_to_api
    from run_workflow import apply_tiny

    prompt = ui_to_api(json.loads(path.read_text()), host)
    apply_tiny(prompt, size=128, steps=3)
    host.run(prompt)
    saved = [img for ui in host.ui_outputs.values() for img in ui.get("images", []) if img["type"] == "output"]
    assert saved, "the workflow saved no image"
    for img in saved:
        assert (Path(host.base_dir) / "output" / img["subfolder"] / img["filename"]).stat().st_size > 1000
