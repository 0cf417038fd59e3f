"""README.md renders as intended: the Nodes table is one table with a row per node, the install has no placeholder."""
import re

import headless
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def _section(title: str) -> list[str]:
    lines = README.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("## "))
    return lines[start:end]


def test_nodes_table_is_one_table_with_every_node():
    lines = _section("Nodes")
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    assert rows == list(range(rows[0], rows[0] + len(rows))), "a blank or text line splits the Nodes table"
    node_ids = re.findall(r"`(AttentionAlign\w+)`", "\n".join(lines[i] for i in rows))
    registered = {node.node_id for node in headless.pack("nodes.registry").NODES}
    assert len(rows) == 2 + len(registered) and set(node_ids) == registered


def test_install_has_no_placeholder_clone():
    assert "<this repository>" not in README
    assert "../shared" not in README
