"""The pack's published assets and the checks the registry and the frontend's template browser rely on.

    .venv/bin/python scripts/pack_assets.py --icon      # redraw web/icon.png (the registry Icon)

* :func:`draw_icon` draws the icon: a heat map in the pack's own colour map (``guidance.viz.colormap``) over two
  shapes, the way Visualize Attention draws a word's attention over the image. Deterministic, no inputs.
* :func:`check_icon` / :func:`check_thumbnail` raise ``ValueError`` naming the file, what it is and what is
  allowed: the registry's Icon is a square PNG/JPG/GIF/SVG of at most 400 px; a workflow's thumbnail is the
  same-name ``.jpg`` the template browser asks for, a square JPEG of 256–1024 px.
* :func:`archive_files` lists what ``comfy node pack`` would put in the published archive: the git-tracked files
  minus the ``.comfyignore`` patterns (only plain folder and file patterns are used there; anything else is refused
  here rather than guessed).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ICON = Path("web/icon.png")
ICON_MAX = 400
THUMB_MIN, THUMB_MAX = 256, 1024


def draw_icon(size: int = 256):
    """The pack's icon as a PIL image: two grey shapes on black, a turbo heat map hot on the disc, cold elsewhere."""
    import torch
    from headless import pack
    from PIL import Image

    colormap = pack("guidance.viz").colormap

    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = (((xx - 0.36) ** 2 + (yy - 0.58) ** 2) < 0.25 ** 2).float()
    square = ((xx - 0.74).abs() < 0.15).float() * ((yy - 0.34).abs() < 0.15).float()
    grey = 0.08 + 0.55 * disc + 0.35 * square
    heat = torch.exp(-((xx - 0.38) ** 2 + (yy - 0.56) ** 2) / (2 * 0.17 ** 2))
    heat = heat + 0.35 * torch.exp(-((xx - 0.74) ** 2 + (yy - 0.34) ** 2) / (2 * 0.08 ** 2))
    heat = (heat - heat.min()) / (heat.max() - heat.min())
    weight = (0.25 + 0.75 * heat)[..., None]            # colour grows with attention, as Visualize blends it
    rgb = grey[..., None] * (1 - weight) + colormap(heat) * weight
    return Image.fromarray((rgb.clamp(0, 1) * 255).round().byte().numpy(), "RGB")


def _open(path: Path, what: str):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ValueError(f"{what} {path} is missing")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{what} {path} is not an image ({e})") from None
    return img


def check_icon(path: Path) -> tuple[int, int]:
    """The registry's Icon rules: PNG, JPEG or GIF (SVG files are accepted unchecked), square, at most 400 px."""
    path = Path(path)
    if path.suffix.lower() == ".svg" and path.is_file():
        return (0, 0)
    img = _open(path, "icon")
    if img.format not in ("PNG", "JPEG", "GIF"):
        raise ValueError(f"icon {path} is {img.format}; allowed: PNG, JPEG, GIF or SVG")
    w, h = img.size
    if w != h or w > ICON_MAX:
        raise ValueError(f"icon {path} is {w}×{h} px; allowed: square, at most {ICON_MAX}×{ICON_MAX} px")
    return w, h


def check_thumbnail(path: Path) -> tuple[int, int]:
    """A workflow's template-browser thumbnail: JPEG, square, 256–1024 px."""
    path = Path(path)
    img = _open(path, "thumbnail")
    if img.format != "JPEG":
        raise ValueError(f"thumbnail {path} is {img.format}; allowed: JPEG (the template browser asks for .jpg)")
    w, h = img.size
    if w != h or not THUMB_MIN <= w <= THUMB_MAX:
        raise ValueError(f"thumbnail {path} is {w}×{h} px; allowed: square, {THUMB_MIN}–{THUMB_MAX} px")
    return w, h


def comfyignore_patterns(root: Path = REPO_ROOT) -> list[str]:
    path = Path(root) / ".comfyignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for p in patterns:
        if any(c in p for c in "*?[]!\\"):
            raise ValueError(f".comfyignore pattern '{p}': only plain folder ('tests/') and file names are used here")
    return patterns


def _ignored(rel: str, patterns: list[str]) -> bool:
    """gitwildmatch for plain patterns: 'dir/' matches that folder at any depth ('/dir/' only at the top), a name
    without a slash matches that file or folder at any depth."""
    parts = rel.split("/")
    for p in patterns:
        anchored, folder = p.startswith("/"), p.endswith("/")
        name = p.strip("/")
        if "/" in name or anchored:
            if rel == name or rel.startswith(name + "/"):
                if folder and rel == name:
                    continue
                return True
            continue
        candidates = parts[:-1] if folder else parts
        if name in candidates:
            return True
    return False


def archive_files(root: Path = REPO_ROOT, tracked: list[str] | None = None) -> list[str]:
    """What ``comfy node pack`` archives: git-tracked files (or ``tracked``) not matched by ``.comfyignore``."""
    if tracked is None:
        tracked = subprocess.run(["git", "-C", str(root), "ls-files"], capture_output=True, text=True,
                                 check=True).stdout.splitlines()
    patterns = comfyignore_patterns(root)
    return [f for f in tracked if f.strip() and not _ignored(f, patterns)]


def main() -> None:
    if sys.argv[1:] == ["--icon"]:
        path = REPO_ROOT / ICON
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_icon().save(path, optimize=True)
        print("wrote", ICON, check_icon(path))
    else:
        sys.exit("usage: pack_assets.py --icon")


if __name__ == "__main__":
    main()
