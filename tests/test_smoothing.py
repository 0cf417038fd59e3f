"""The official 3×3 Gaussian smoothing (A&E / T-SAM): taps and reflect padding, on an asymmetric map."""
import pytest
import torch
from attention_align.guidance.smoothing import official_taps, smooth_maps


def test_taps_match_the_official_kernel():
    torch.testing.assert_close(official_taps(), torch.tensor([0.211942, 0.576117, 0.211942]), atol=1e-6, rtol=0)
    k2 = official_taps()[:, None] * official_taps()[None, :]
    assert abs(k2[1, 1].item() - 0.331911) < 1e-6
    assert abs(k2[0, 1].item() - 0.122103) < 1e-6
    assert abs(k2[0, 0].item() - 0.044919) < 1e-6


def naive_smooth(m):
    h, w = m.shape
    taps = [0.2119415576170854, 0.5761168847658291, 0.2119415576170854]

    def reflect(i, n):
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    out = torch.zeros(h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            out[y, x] = sum(taps[dy + 1] * taps[dx + 1] * float(m[reflect(y + dy, h), reflect(x + dx, w)])
                            for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return out


def test_smoothing_an_asymmetric_map_uses_reflect_padding():
    m = torch.arange(20, dtype=torch.float64).reshape(4, 5) ** 1.7
    m[0, 4] = 50.0                                       # an asymmetric corner peak
    got = smooth_maps(m[None, None])[0, 0]
    torch.testing.assert_close(got, naive_smooth(m), rtol=1e-12, atol=1e-12)
    # reflect, not replicate/zero padding: the corner value is a weighted sum of interior values
    assert not torch.allclose(got, torch.nn.functional.conv2d(
        torch.nn.functional.pad(m[None, None], (1, 1, 1, 1), mode="replicate"),
        (official_taps(dtype=torch.float64)[:, None] * official_taps(dtype=torch.float64)[None, :])[None, None])[0, 0])


def test_batched_shapes_are_kept():
    maps = torch.rand(2, 7, 6, 5)
    out = smooth_maps(maps)
    assert out.shape == maps.shape
    torch.testing.assert_close(out[1, 3].double(), naive_smooth(maps[1, 3]), rtol=1e-5, atol=1e-6)


def test_maps_too_small_to_smooth_are_an_error():
    with pytest.raises(ValueError, match="^level: the attention maps at this level are 1×5, too small"):
        smooth_maps(torch.rand(1, 5))
