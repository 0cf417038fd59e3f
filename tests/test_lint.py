"""The tree is clean under the project's ruff configuration (pyflakes, bugbear, isort, pyupgrade; pyproject.toml)."""
import shutil
import subprocess
import sys

from conftest import ROOT, missing


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(ROOT / ".venv" / "bin"))
    if ruff is None:
        try:
            import ruff  # noqa: F401
        except ImportError:
            missing("needs ruff (pip install ruff; scripts/setup_env.sh installs it)")
        cmd = [sys.executable, "-m", "ruff"]
    else:
        cmd = [ruff]
    result = subprocess.run([*cmd, "check", "--no-cache", "--output-format", "concise", str(ROOT)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
