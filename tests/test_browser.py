"""Browser tier: what an artist sees in ComfyUI's own web UI (headless Chromium, the frontend ComfyUI serves).

ComfyUI runs as a server on the tiny model (``scripts/frontend.py``); each workflow in ``example_workflows/`` is loaded as
dropping its file would, checked on the canvas (no missing-node dialog, no overlapping nodes, titles that fit, a zoom
at which node text is drawn, one spelling of the pack's name), queued with the frontend's own queue call and run to
the end. Screenshots go to ``tests/artifacts/`` (git-ignored; CI keeps them). Skipped, with the reason, without
Chromium, Playwright or ComfyUI (under CI: failed with it).
"""
import json
import re

import frontend  # noqa: E402  (scripts/frontend.py)
import pytest
from conftest import ROOT, missing

pytestmark = [pytest.mark.browser, pytest.mark.heavy]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
ARTIFACTS = ROOT / "tests" / "artifacts"
SIZE, STEPS = 96, 4         # 96 px: Attention Regulation needs 3×3 maps at image ÷32


@pytest.fixture(scope="module")
def page(host, tiny_ckpt, tmp_path_factory):
    reason = frontend.browser_unavailable()
    if reason:
        missing(reason)
    server = frontend.ComfyServer(tmp_path_factory.mktemp("browser_base"),
                                  checkpoints={tiny_ckpt: host.checkpoint_path(tiny_ckpt)}, tiny_dit=True).start()
    try:
        with frontend.Frontend(server) as fe:
            yield fe
    finally:
        server.stop()


def _tiny(path, host, tiny_ckpt):
    """On the tiny model an SDXL file becomes its SD1.5 twin's graph, which the server would answer from its cache
    (nothing runs, no progress): the SDXL files run at SIZE + 32 px. A Flux / SD3.5 file gets the tiny DiT of its
    family in place of its loaders."""
    from headless import api_to_ui
    from run_workflow import dit_family, tiny_prompt

    workflow = json.loads(path.read_text())
    size = SIZE + 32 if path.stem.endswith("_sdxl") else SIZE
    ui, prompt = tiny_prompt(workflow, host, size=size, steps=STEPS, ckpt=tiny_ckpt)
    return ui if dit_family(workflow) is None else api_to_ui(prompt, host)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_opens_legibly_runs_and_shows_its_outputs(page, host, tiny_ckpt, path):
    page.load(json.loads(path.read_text()))
    shot = page.screenshot(ARTIFACTS / f"{path.stem}__loaded.png")
    assert not page.dialogs(), f"dialog on loading {path.name}: {page.dialogs()} (see {shot})"
    view = page.view()
    assert not view["low_quality"], f"opens at {view['scale']:.0%} zoom, where node text is not drawn"
    nodes = page.nodes()
    assert not frontend.overlaps(nodes), frontend.overlaps(nodes)
    for n in nodes:
        assert n["titleWidth"] <= n["titleRoom"], f"title '{n['title']}' is cut at the node's width ({shot})"

    page.load(_tiny(path, host, tiny_ckpt))
    pid = page.queue()
    shot = page.screenshot(ARTIFACTS / f"{path.stem}__ran.png")
    assert not page.dialogs(), f"dialog after running {path.name}: {page.dialogs()} (see {shot})"
    executed = {e["node"]: e["output"] for e in page.events("executed", pid)}
    assert any(o.get("images") for o in executed.values()), "no image came back"
    # every progress bar the frontend is told about only moves forward, against one total
    by_node = {}
    for e in page.events("progress", pid):
        by_node.setdefault(e["node"], []).append((e["value"], e["max"]))
    assert by_node, "no progress reported"
    for node, values in by_node.items():
        assert len({m for _, m in values}) == 1 and [v for v, _ in values] == sorted(v for v, _ in values), \
            (node, values)


def test_show_tokens_text_is_drawn_on_the_node(page, host, tiny_ckpt):
    """The server returns Show Tokens' text as UI output; the pack's frontend extension puts it on the node."""
    path = ROOT / "example_workflows" / "attend_and_excite_sd15.json"
    page.load(_tiny(path, host, tiny_ckpt))
    before = [n for n in page.nodes() if n["type"] == "AttentionAlignShowTokens"]
    assert before and any(w["name"] == "shown_text" for w in before[0]["widgets"]), "no text widget on Show Tokens"
    pid = page.queue()
    (node,) = [n for n in page.nodes() if n["type"] == "AttentionAlignShowTokens"]
    shown = next(w["value"] for w in node["widgets"] if w["name"] == "shown_text")
    returned = next(e["output"]["text"] for e in page.events("executed", pid) if e["node"] == str(node["id"]))
    assert shown == "\n".join(returned) and re.search(r"subjects: cat\[\d+\], frog\[\d+\]", shown), shown
    visible = page.page.evaluate("() => [...document.querySelectorAll('textarea')].filter(t => t.offsetParent "
                                 "!== null).map(t => t.value)")
    assert shown in visible, "the text is not drawn on the canvas"
    page.screenshot(ARTIFACTS / "show_tokens__ran.png")


def test_the_pack_has_one_name_in_category_badge_and_titles(page):
    defs = page.server.get("/object_info")
    ours = {k: v for k, v in defs.items() if k.startswith("AttentionAlign")}
    assert len(ours) == 14
    page.load(json.loads((ROOT / "example_workflows" / "attention_modulation_sd15.json").read_text()))
    badges = {b for n in page.nodes() if n["type"].startswith("AttentionAlign") for b in n["badges"]}
    (name,) = badges
    spellings = re.compile(r"attention[ _-]?align", re.I)
    for node_id, d in ours.items():
        assert d["category"].split("/")[0] == name, (node_id, d["category"])
        assert not spellings.search(d["display_name"]), f"{node_id}: '{d['display_name']}' spells the pack's name " \
                                                         f"again next to its badge '{name}'"


def test_template_browser_lists_every_workflow_with_its_thumbnail(page):
    """ComfyUI's template browser lists the pack's example_workflows and shows <name>.jpg as each one's picture."""
    import urllib.request

    listed = page.server.get("/workflow_templates")
    assert sorted(listed[frontend.PACK_NAME]) == [p.stem for p in WORKFLOWS]
    for path in WORKFLOWS:
        with urllib.request.urlopen(f"{page.server.url}/api/workflow_templates/{frontend.PACK_NAME}/{path.stem}.jpg",
                                    timeout=30) as r:
            assert r.headers["Content-Type"] == "image/jpeg"
            assert r.read() == path.with_suffix(".jpg").read_bytes()


HELP_JS = """async ([id, timeout]) => {
    const el = [...document.querySelectorAll('*')].find(e => e.__vue_app__);
    const stores = el.__vue_app__.config.globalProperties.$pinia._s;
    const tabs = stores.get('sidebarTab');
    if (tabs.activeSidebarTabId !== 'node-library') tabs.toggleSidebarTab('node-library');
    const help = stores.get('nodeHelp');
    help.openHelp(stores.get('nodeDef').nodeDefsByName[id]);
    const wanted = 'img/' + id + '.png', t0 = Date.now();
    while (Date.now() - t0 < timeout) {
        const img = [...document.querySelectorAll('img')].find(i => (i.getAttribute('src') || '').endsWith(wanted));
        if (img && img.complete && img.naturalWidth > 0 && !help.isLoading) {
            return {src: img.getAttribute('src'), width: img.naturalWidth, error: help.errorMsg,
                    headings: [...document.querySelectorAll('h1, h2')].filter(h => h.offsetParent !== null)
                                  .map(h => h.innerText),
                    inputs: [...document.querySelectorAll('table code')].map(c => c.innerText)};
        }
        await new Promise(r => setTimeout(r, 100));
    }
    return {error: help.errorMsg || 'no picture ' + wanted + ' was drawn'};
}"""


def test_help_panel_shows_each_nodes_page_with_its_picture(page, host):
    """The node library's help panel fetches web/docs/<node id>.md and draws it, picture included (relative media
    URLs are rewritten against the page's folder)."""
    import nodes as comfy_nodes

    ids = sorted(p.stem for p in (ROOT / "web" / "docs").glob("*.md"))
    assert ids
    for node_id in ids:
        shown = page.page.evaluate(HELP_JS, [node_id, 15000])
        assert not shown.get("error"), (node_id, shown)
        assert shown["src"] == f"/extensions/{frontend.PACK_NAME}/docs/img/{node_id}.png"
        assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] in shown["headings"] and "Inputs" in shown["headings"]
        missing = {n for n, _ in host.input_order(node_id)} - set(shown["inputs"])
        assert not missing, f"the help panel of {node_id} shows no row for {sorted(missing)}"
    page.screenshot(ARTIFACTS / "help_panel.png")
    page.page.evaluate("() => [...document.querySelectorAll('*')].find(e => e.__vue_app__).__vue_app__"
                       ".config.globalProperties.$pinia._s.get('nodeHelp').closeHelp()")
