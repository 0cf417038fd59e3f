"""Registry metadata, checked the way ``comfy node validate`` / ``comfy node pack`` (comfy-cli) and the registry's
specification read ``pyproject.toml``: name and version rules, license, repository, classifiers, requires-comfyui,
the Icon (a committed square image ≤ 400 px at this repository's raw address) and what the published archive holds.
"""
import re

import pack_assets  # noqa: E402  (scripts/pack_assets.py)
import pytest
from conftest import ROOT, pyproject

CONFIG = pyproject()
PROJECT, COMFY = CONFIG["project"], CONFIG["tool"]["comfy"]
#: comfy-cli's registry/config_parser.py: the OS prefixes and accelerator classifiers it accepts
OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                "GPU :: Apple Metal"}
VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")


def test_name_and_version_follow_the_registry_rules():
    name = PROJECT["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([._-][A-Za-z0-9]+)*", name), name
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"])
    assert re.fullmatch(r"[a-z][a-z0-9-]*", COMFY["PublisherId"]) and COMFY["DisplayName"]
    for part in COMFY["requires-comfyui"].split(","):
        assert VERSION_PART.match(part.strip()), COMFY["requires-comfyui"]


def test_license_is_a_committed_gpl3_file_and_its_classifier():
    # comfy-cli accepts only {file = …} or {text = …}; a bare string is read as no license
    assert set(PROJECT["license"]) == {"file"}
    text = (ROOT / PROJECT["license"]["file"]).read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 3, 29 June 2007" in text
    assert "License :: OSI Approved :: GNU General Public License v3 (GPLv3)" in PROJECT["classifiers"]


def test_classifiers_are_ones_the_registry_reads():
    for c in PROJECT["classifiers"]:
        if c.startswith("Operating System :: "):
            assert c[len("Operating System :: "):].startswith(OS_PREFIXES), c
        if c.startswith("Environment ::"):
            assert c[len("Environment :: "):] in ACCELERATORS, c


def test_repository_and_icon_name_one_address_and_the_icon_is_committed_and_valid():
    repo = PROJECT["urls"]["Repository"]
    m = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", repo)
    assert m, f"Repository '{repo}' is not https://github.com/<owner>/<name>"
    icon = COMFY["Icon"]
    prefix = f"https://raw.githubusercontent.com/{m[1]}/{m[2]}/main/"
    assert icon.startswith(prefix), f"Icon '{icon}' is not a file of {repo} (expected {prefix}<path>)"
    path = ROOT / icon[len(prefix):]
    w, h = pack_assets.check_icon(path)
    assert 0 < w <= 400 and w == h
    assert str(path.relative_to(ROOT)) in pack_assets.archive_files()


def test_the_icon_is_what_the_script_draws():
    from PIL import Image, ImageChops

    committed = Image.open(ROOT / pack_assets.ICON).convert("RGB")
    assert ImageChops.difference(committed, pack_assets.draw_icon()).getbbox() is None, \
        "web/icon.png is stale: run scripts/pack_assets.py --icon"


def test_the_archive_has_the_pack_and_none_of_the_development_files():
    files = pack_assets.archive_files()
    for path in files:
        assert not path.startswith(("tests/", "benchmarks/", "scripts/", ".ci/")), path
    for needed in ("__init__.py", "pyproject.toml", "README.md", "LICENSE", "requirements.txt", "web/icon.png",
                   "web/show_tokens.js"):
        assert needed in files, needed
    runtime = {str(p.relative_to(ROOT)) for d in ("nodes", "guidance") for p in (ROOT / d).rglob("*.py")}
    assert runtime and runtime <= set(files), sorted(runtime - set(files))
    for include in COMFY.get("includes", []):
        assert (ROOT / include).exists(), f"includes names '{include}', which does not exist"


# -- bad input: the checks name the file, what it is and what is allowed --------------------------------------
@pytest.mark.parametrize("size,fmt,message", [
    ((401, 401), "PNG", "401×401 px; allowed: square, at most 400×400"),
    ((300, 200), "PNG", "300×200 px; allowed: square"),
    ((64, 64), "WEBP", "is WEBP; allowed: PNG, JPEG, GIF or SVG"),
])
def test_a_wrong_icon_is_refused_with_what_is_allowed(tmp_path, size, fmt, message):
    from PIL import Image

    path = tmp_path / f"icon.{fmt.lower()}"
    Image.new("RGB", size).save(path, fmt)
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        pack_assets.check_icon(path)
    assert str(path) in str(e.value)


def test_a_missing_icon_or_thumbnail_is_named(tmp_path):
    for check, what in ((pack_assets.check_icon, "icon"), (pack_assets.check_thumbnail, "thumbnail")):
        with pytest.raises(ValueError, match=f"{what} .*nothing.png is missing"):
            check(tmp_path / "nothing.png")


@pytest.mark.parametrize("size,fmt,message", [
    ((512, 384), "JPEG", "512×384 px; allowed: square, 256–1024 px"),
    ((128, 128), "JPEG", "128×128 px; allowed: square, 256–1024 px"),
    ((512, 512), "PNG", "is PNG; allowed: JPEG"),
])
def test_a_wrong_thumbnail_is_refused_with_what_is_allowed(tmp_path, size, fmt, message):
    from PIL import Image

    path = tmp_path / "wf.jpg"
    Image.new("RGB", size).save(path, fmt)
    with pytest.raises(ValueError, match=re.escape(message)):
        pack_assets.check_thumbnail(path)


def test_comfyignore_matching_and_unsupported_patterns(tmp_path):
    (tmp_path / ".comfyignore").write_text("# dev\ntests/\n/scripts/\nnotes.txt\n")
    tracked = ["tests/a.py", "nodes/tests/b.py", "scripts/x.py", "web/scripts/y.js", "notes.txt", "web/notes.txt",
               "tests", "nodes/c.py"]
    assert pack_assets.archive_files(tmp_path, tracked) == ["web/scripts/y.js", "tests", "nodes/c.py"]
    (tmp_path / ".comfyignore").write_text("*.md\n")
    with pytest.raises(ValueError, match=r"pattern '\*\.md'"):
        pack_assets.archive_files(tmp_path, tracked)
