"""Pixels of the visualisation: colour map, word maps, level averaging, overlay, grid."""
import pytest
import torch
import torch.nn.functional as F
from attention_align.guidance.tokens import Word
from attention_align.guidance.viz import (
    colorbar,
    colormap,
    combine_sizes,
    grid,
    heat_tiles,
    matrix_pixels,
    normalize_each,
    word_maps,
)


def test_colormap_range_shape_and_ends():
    c = colormap(torch.linspace(0, 1, 11).reshape(1, 11))
    assert c.shape == (1, 11, 3) and c.min() >= 0 and c.max() <= 1
    low, high = colormap(torch.tensor(0.15)), colormap(torch.tensor(0.9))
    assert low[2] > 2 * low[0]            # cold side is blue
    assert high[0] > 2 * high[2]          # hot side is red


def test_word_maps_average_the_word_pieces():
    maps = torch.rand(2, 6, 3, 3)
    words = [Word("checkered", (2, 3), 1), Word("bowl", (4,), 1)]
    got = word_maps(maps, words)
    torch.testing.assert_close(got[:, 0], (maps[:, 2] + maps[:, 3]) / 2)
    torch.testing.assert_close(got[:, 1], maps[:, 4])
    with pytest.raises(ValueError, match="only 6 tokens"):
        word_maps(maps, [Word("x", (9,), 1)])


def test_combine_sizes_resizes_to_the_finest_then_averages():
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4)
    expected = (a + F.interpolate(b, size=(8, 8), mode="bilinear", align_corners=False)) / 2
    torch.testing.assert_close(combine_sizes([b, a]), expected)


def test_heat_tiles_blend_over_the_background():
    maps = torch.rand(2, 4, 4)
    bg = torch.rand(8, 8, 3)
    heat = heat_tiles(maps, (8, 8))
    value = normalize_each(F.interpolate(maps[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0])
    grey = 0.25 + 0.5 * (bg * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    weight = (0.1 + 0.8 * value)[..., None]
    torch.testing.assert_close(heat_tiles(maps, (8, 8), bg, alpha=(0.1, 0.9)), weight * heat + (1 - weight) * grey)
    n = normalize_each(maps)
    assert n.amin(dim=(-1, -2)).eq(0).all() and n.amax(dim=(-1, -2)).eq(1).all()


@pytest.mark.parametrize("shade", [0.0, 0.5, 1.0])
def test_hot_spots_stay_red_and_cold_regions_show_the_image_on_any_background(shade):
    """A constant-weight blend turned hot spots purple-brown on dark images; the hottest pixel must read as red
    (turbo's hot end) whatever the image, and the coldest must stay closer to the image than to the colour map."""
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1.0
    bg = torch.full((4, 4, 3), shade)
    bg[..., 2] = 1.0 - shade                                   # dark, mid and bright backgrounds, some blue
    tile = heat_tiles(maps, (4, 4), bg)[0]
    r, g, b = tile[0, 0]
    assert r > 0.5 and r > 3 * b and r > 3 * g               # turbo ends in dark red (0.57, 0.05, 0)
    cold = tile[3, 3]
    assert (cold - colormap(torch.tensor(0.0))).abs().sum() > 0.3


def test_colorbar_runs_cold_to_hot():
    bar = colorbar(32, 4)
    assert bar.shape == (4, 32, 3)
    torch.testing.assert_close(bar[0, 0], colormap(torch.tensor(0.0)))
    torch.testing.assert_close(bar[3, -1], colormap(torch.tensor(1.0)))


def test_grid_places_tiles_row_by_row():
    tiles = torch.stack([torch.full((2, 3, 3), float(i) / 10) for i in range(5)])
    g = grid(tiles, columns=2, pad=1, fill=1.0)
    assert g.shape == (3 * 2 + 2, 2 * 3 + 1, 3)
    assert g[0, 0, 0] == 0.0 and g[0, 4, 0] == pytest.approx(0.1) and g[3, 0, 0] == pytest.approx(0.2)
    assert g[6, 4, 0] == 1.0                                   # empty cell stays background


def test_matrix_pixels_blank_the_upper_triangle():
    px = matrix_pixels(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), cell=2)
    assert px.shape == (4, 4, 3)
    assert torch.all(px[0:2, 2:4] == 1.0)
    torch.testing.assert_close(px[0, 0], colormap(torch.tensor(1.0)))
