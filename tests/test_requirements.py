"""requirements.txt declares exactly what the pack imports (floors only), and pyproject.toml says the same."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = [ROOT / "__init__.py", *sorted((ROOT / "nodes").rglob("*.py")), *sorted((ROOT / "guidance").rglob("*.py")),
        *sorted(p for p in (ROOT / "toy").rglob("*.py") if p.name not in ("train.py", "train_v2.py"))]
# toy/train.py and toy/train_v2.py are tools like scripts/ (they train the toy model in the development venv: tqdm,
# scripts/headless.py)
HOST = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "server", "nodes", "node_helpers",
        "latent_preview", "execution"}                      # ComfyUI's own modules: the host, never declared
OPTIONAL = {"spacy"}                                        # parser = spacy only; the error names the install
DISTRIBUTION = {"PIL": "pillow"}                            # import name → distribution name


def _imported() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACK:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in HOST and top not in OPTIONAL \
                        and top not in ("toy",):
                    found.setdefault(DISTRIBUTION.get(top, top).lower(), set()).add(str(path.relative_to(ROOT)))
    return found


def _declared(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", line)
            out[m.group(1).lower()] = m.group(2).replace(" ", "")
    return out


def test_requirements_are_what_the_pack_imports_with_floors_only():
    declared = _declared((ROOT / "requirements.txt").read_text().splitlines())
    imported = _imported()
    assert sorted(declared) == sorted(imported), (
        f"declared but not imported: {sorted(set(declared) - set(imported))}; imported but not declared: "
        f"{ {k: sorted(v) for k, v in imported.items() if k not in declared} }")
    assert all(spec.startswith(">=") and "," not in spec for spec in declared.values()), declared


def test_pyproject_dependencies_match_requirements():
    # the one-line `dependencies = [...]` of [project] (tomllib is 3.11+, the pack supports 3.10)
    line = re.search(r'^dependencies = \[(.*)\]$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert _declared(re.findall(r'"([^"]+)"', line)) == _declared((ROOT / "requirements.txt").read_text().splitlines())
