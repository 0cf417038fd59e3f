"""The set-up and CI rules (fast tier): under CI a missing dependency fails a test instead of skipping it, no test
skips another way, CI turns that rule on, and the set-up installs the test extras pyproject.toml declares."""
from __future__ import annotations

import ast
import re

import conftest
import headless  # noqa: E402  (scripts/headless.py)
import pytest
from conftest import ROOT, pyproject

#: The one skip that is not `missing`: it tests the error a user gets *without* spaCy, so it cannot run where the
#: set-up installed spaCy (the issue that made this rule allows it).
ALLOWED_SKIPS = {("test_host_methods.py", "spaCy is installed here")}
SKIP_CALLS = {"skip", "skipif", "importorskip", "xfail"}


@pytest.mark.parametrize("env, fails", [
    ({"ATTENTION_ALIGN_STRICT": "1"}, True),
    ({"ATTENTION_ALIGN_STRICT": "0", "CI": "true"}, False),       # the explicit variable wins
    ({"CI": "true"}, True),
    ({"CI": "TRUE"}, True),
    ({}, False),
    ({"CI": "false"}, False),
])
def test_a_missing_dependency_fails_under_ci_and_skips_elsewhere(monkeypatch, env, fails):
    for name in ("ATTENTION_ALIGN_STRICT", "CI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = pytest.fail.Exception if fails else pytest.skip.Exception
    with pytest.raises(expected, match="needs a thing"):
        conftest.missing("needs a thing")


def test_a_bad_strict_value_is_refused_with_the_allowed_ones(monkeypatch):
    monkeypatch.setenv("ATTENTION_ALIGN_STRICT", "yes")
    with pytest.raises(ValueError, match=r"ATTENTION_ALIGN_STRICT='yes': allowed are 1 .* and 0"):
        conftest.missing("needs a thing")


def test_no_comfyui_fails_the_host_tests_under_ci_with_what_to_do(monkeypatch):
    monkeypatch.setattr(headless, "find_comfyui", lambda: None)
    monkeypatch.setenv("ATTENTION_ALIGN_STRICT", "1")
    with pytest.raises(pytest.fail.Exception, match=r"run scripts/setup_env.sh .*or set COMFYUI_PATH"):
        conftest.comfyui()
    monkeypatch.setenv("ATTENTION_ALIGN_STRICT", "0")
    with pytest.raises(pytest.skip.Exception, match="no ComfyUI found"):
        conftest.comfyui()


def test_the_built_host_is_found_after_the_others_and_before_home(tmp_path, monkeypatch):
    def checkout(path):
        (path / "comfy").mkdir(parents=True)
        (path / "main.py").write_text("")
        (path / "nodes.py").write_text("")
        return path

    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    repo = tmp_path / "repo"
    repo.mkdir()
    assert headless.find_comfyui(repo) is None
    home = checkout(tmp_path / "home" / "ComfyUI")
    assert headless.find_comfyui(repo) == home
    built = checkout(repo / ".host" / "ComfyUI")
    assert headless.find_comfyui(repo) == built
    chosen = checkout(tmp_path / "chosen")
    monkeypatch.setenv("COMFYUI_PATH", str(chosen))
    assert headless.find_comfyui(repo) == chosen
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="is not a ComfyUI checkout"):
        headless.find_comfyui(repo)


def _skips(path):
    """(line, reason or None) of every pytest skip/skipif/importorskip/xfail call in a test file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SKIP_CALLS:
            reason = next((k.value.value for k in node.keywords if k.arg == "reason"
                           and isinstance(k.value, ast.Constant)), None)
            yield node.lineno, reason


def test_no_test_skips_except_through_missing():
    found, allowed = [], set()
    for path in sorted((ROOT / "tests").glob("*.py")):
        for line, reason in _skips(path):
            if (path.name, reason) in ALLOWED_SKIPS:
                allowed.add((path.name, reason))
            elif path.name != "conftest.py":
                found.append(f"{path.name}:{line} ({reason})")
    assert not found, f"skips that would pass CI silently; call conftest.missing instead: {found}"
    assert allowed == ALLOWED_SKIPS, "an allowed skip is gone: ALLOWED_SKIPS is stale"


def test_ci_turns_the_rule_on_and_builds_the_host():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export ATTENTION_ALIGN_STRICT=1$", ci, re.M)
    assert "export COMFYUI_TARBALL=" in ci
    assert ci.strip().endswith(".venv/bin/python -m pytest tests")


def test_the_setup_installs_the_test_extras_pyproject_declares():
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    pip_line = re.search(r'^"\$\{PIP\[@\]\}" -r requirements\.txt (.*?)\n(?!\s)', setup, re.M | re.S).group(1)
    installed = re.findall(r'"([^"]+)"', pip_line)
    declared = pyproject()["project"]["optional-dependencies"]["test"]
    assert sorted(installed) == sorted(declared)
