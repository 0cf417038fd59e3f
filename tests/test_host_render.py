"""What the visualisation draws around the maps: colour scales, titles and axis labels that fit the tile."""
import pytest
import torch
from PIL import Image, ImageDraw

WORDS = ["a", "checkered", "bowl", "on", "a#2", "red", "and", "blue", "table", "with", "cups", "photograph",
         "of", "an", "old", "wooden", "kitchen", "at", "dusk", "light"]


@pytest.fixture(scope="module")
def render(host):
    return host.pack_module("nodes.host.render")


@pytest.mark.parametrize("n", [3, 10, 12, 20])
@pytest.mark.parametrize("px", [128, 512])
def test_matrix_labels_stay_inside_the_tile_and_do_not_overlap(render, n, px):
    lay = render.matrix_layout(n, WORDS[:n], (px, px), "S: cross-attention similarity")
    assert lay["boxes"], "no axis label drawn"
    for _, _, (x0, y0, x1, y1) in lay["boxes"]:
        assert 0 <= x0 and x1 <= px and 0 <= y0 and y1 <= px - lay["bar_h"]
    rows = sorted((b for kind, _, b in lay["boxes"] if kind == "row"), key=lambda b: b[1])
    for (_, _, _, bottom), (_, top, _, _) in zip(rows, rows[1:]):
        assert top >= bottom - 0.5                       # successive row labels do not overlap
    assert lay["x0"] + n * lay["cell"] <= px and lay["y0"] + n * lay["cell"] <= px - lay["bar_h"]
    if px == 512:
        assert lay["every"] == 1                         # at 512 px every token is labelled


@pytest.mark.parametrize("px", [128, 256, 512])
def test_titles_are_fitted_to_the_tile(render, px):
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title = "Attend-and-Excite loss per step (dpmpp_2s_ancestral_cfg_pp)"
    font, text = render.fit_text(draw, title, px - 8, max(9, px // 22))
    assert draw.textlength(text, font=font) <= px - 8
    assert text == title or text.endswith("…")


def test_heat_tiles_and_matrices_carry_a_colour_scale(render):
    from attention_align.guidance.viz import colorbar

    tile = render.heat_tile_with_legend(torch.zeros(128, 128, 3), "car", 0.01, 0.3)
    bar = colorbar(128, render.colorbar_height(128))
    mid = slice(50, 78)                                   # the bar's middle, clear of the end labels
    assert (tile[-2, mid] - bar[-2, mid]).abs().max() < 2 / 255
    m = render.matrix_tile(torch.rand(5, 5).tril(), WORDS[:5], (256, 256), "T")
    row = m[-2]
    assert (row[:, 0] - row[:, 2]).abs().max() > 0.3      # a colour ramp, not a white margin
