"""Node help pages (web/docs/<node id>.md, which the frontend's node library shows as the node's help): one per node,
with every input of the node's schema, a picture that exists, and the paper; the README links each page."""
import re

import headless
import pytest
from conftest import ROOT

DOCS = ROOT / "web" / "docs"


NODE_IDS = [node.node_id for node in headless.pack("nodes.registry").NODES]


def test_every_node_has_a_page_and_no_page_is_stray():
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(NODE_IDS)


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_page_documents_every_input_of_the_schema(host, node_id):
    page = (DOCS / f"{node_id}.md").read_text()
    table = page.split("## Inputs", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \| [^|]+ \| [^|]+ \| *\S.*\|$", table, re.M)
    schema = [name for name, _ in host.input_order(node_id)]
    assert documented == schema, f"{node_id}.md documents {documented}; the schema has {schema} (in this order)"


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_page_has_its_picture_and_the_paper(node_id):
    from PIL import Image

    page = (DOCS / f"{node_id}.md").read_text()
    pictures = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", page)
    assert pictures, f"{node_id}.md has no picture"
    for rel in pictures:
        assert not re.match(r"\w+://|/", rel), f"{rel}: pictures are relative to the page (the panel rewrites them)"
        img = Image.open(DOCS / rel)
        assert img.format == "PNG" and img.width <= 1024, (rel, img.format, img.size)
    paper = page.split("## Paper", 1)[1]
    assert re.search(r"arXiv \d{4}\.\d{4,5}|its node's page", paper), f"{node_id}.md names no paper"


def test_every_picture_is_used_by_a_page():
    used = {m for p in DOCS.glob("*.md") for m in re.findall(r"\]\((img/[^)]+)\)", p.read_text())}
    assert {f"img/{p.name}" for p in (DOCS / "img").iterdir()} == used


def test_readme_links_every_page():
    readme = (ROOT / "README.md").read_text()
    for node_id in NODE_IDS:
        assert f"](web/docs/{node_id}.md)" in readme, node_id


def _note(path) -> str:
    import json

    return next(n["widgets_values"][0] for n in json.loads(path.read_text())["nodes"] if n["type"] == "Note")


def test_the_workflows_notes_say_the_defaults_a_user_may_need():
    """The example workflows' Notes name the defaults that differ by model: A&E's softmax (auto: padding kept for
    CLIP, left out for T5), on DiTs what encoders = both does, and the joint temperature's step rule."""
    flows = ROOT / "example_workflows"
    assert all("Softmax: auto" in _note(p) for p in flows.glob("attend_and_excite_*.json"))
    for stem in ("attend_and_excite", "syngen"):
        assert all("encoders = both" in _note(flows / f"{stem}_{family}.json") for family in ("flux", "sd35"))
    assert all("first_steps = 3" in _note(p) for p in flows.glob("joint_temperature_*.json"))
