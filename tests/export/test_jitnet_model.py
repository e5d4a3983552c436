import pytest
import torch
import torch.nn.functional as F

from export.jitnet import build_jitnet, count_parameters, upsample2x


@pytest.mark.parametrize(
    "width, exact, paper",
    [(0.5, 833_819, 0.75e6), (1.0, 3_326_771, 3.0e6)],
)
def test_parameter_count_matches_the_paper_scale(width, exact, paper):
    n = count_parameters(build_jitnet(width, num_classes=3))
    assert n == exact  # pins the architecture: any change to it shows here
    assert abs(n - paper) / paper < 0.12  # the paper: ~3.0M at width 1.0, ~0.75M at 0.5


def test_width_scales_parameters_quadratically():
    small, full = (count_parameters(build_jitnet(w, 2)) for w in (0.5, 1.0))
    assert 3.6 < full / small < 4.2


@pytest.mark.parametrize("shape", [(1, 3, 4, 6), (2, 5, 7, 3), (1, 1, 1, 1)])
def test_upsample2x_is_exact_bilinear(shape):
    x = torch.randn(*shape)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(upsample2x(x), ref, atol=1e-6)


@pytest.mark.parametrize("hw", [(64, 96), (256, 448)])
def test_output_is_per_pixel_logits_at_input_size(hw):
    out = build_jitnet(0.5, num_classes=4)(torch.rand(1, 3, *hw) * 255)
    assert out.shape == (1, 4, *hw)


def test_same_seed_same_weights_different_seed_different_weights():
    a, b, c = build_jitnet(0.5, 2, seed=1), build_jitnet(0.5, 2, seed=1), build_jitnet(0.5, 2, seed=2)
    wa, wb, wc = (m.enc1.conv1[0].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
