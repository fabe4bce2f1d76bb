"""The VITON-HD training objectives: discriminator structure, GAN / feature-matching / perceptual losses,
segmentation cross-entropy, the TPS second-order constraint and the masked L1. Tiny tensors only."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torchvision
from torch import nn

from vitonhd_models.losses import (
    VGG_LAYER_WEIGHTS,
    MultiscaleDiscriminator,
    NLayerDiscriminator,
    PerceptualLoss,
    VGG19Features,
    d_hinge_loss,
    feature_matching_loss,
    g_hinge_loss,
    load_vgg19_state_dict,
    tps_second_order_loss,
    weighted_cross_entropy,
)

# ---------------------------------------------------------------------------------------------------
# Discriminators
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(32, 24), (128, 96)])
def test_multiscale_discriminator_structure(size):
    torch.manual_seed(0)
    n_layers, num_D = 3, 2
    d = MultiscaleDiscriminator(3, ndf=4, n_layers=n_layers, num_D=num_D)
    out = d(torch.randn(1, 3, *size))
    assert len(out) == num_D, f"expected {num_D} scales, got {len(out)}"
    for i, scale in enumerate(out):
        assert len(scale) == n_layers + 2, f"scale {i}: expected {n_layers + 2} outputs, got {len(scale)}"
        assert scale[-1].shape[1] == 1, f"scale {i}: prediction has {scale[-1].shape[1]} channels, not 1"
        assert all(min(t.shape[2:]) >= 1 for t in scale), f"scale {i}: a feature map collapsed"


def test_discriminator_scales_see_downsampled_input():
    torch.manual_seed(0)
    out = MultiscaleDiscriminator(3, ndf=4, n_layers=2, num_D=2)(torch.randn(1, 3, 64, 48))
    first, second = out[0][0].shape[2:], out[1][0].shape[2:]
    # 64x48 -> conv s2 (pad 2) -> 33x25; pooled 32x24 -> 17x13.
    assert (tuple(first), tuple(second)) == ((33, 25), (17, 13)), f"got {first} and {second}"


def test_discriminator_uses_spectral_and_instance_norm():
    d = NLayerDiscriminator(3, ndf=4, n_layers=3)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in d.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert all(hasattr(c, "weight_orig") for c in convs), "every conv should carry spectral norm"
    assert len(norms) == 3, f"expected InstanceNorm on all but the first and last conv, got {len(norms)}"
    assert not any(n.affine for n in norms), "InstanceNorm must be affine-free"


def test_discriminator_rejects_too_small_input():
    d = MultiscaleDiscriminator(3, ndf=4, n_layers=2, num_D=3)
    with pytest.raises(ValueError, match="scale 2"):
        d(torch.randn(1, 3, 4, 4))  # 4 -> 2 -> 1 at the third scale


# ---------------------------------------------------------------------------------------------------
# GAN and feature-matching losses
# ---------------------------------------------------------------------------------------------------


def _constant_pred(value: float, num_D: int = 2) -> list[list[torch.Tensor]]:
    return [[torch.randn(1, 4, 5, 5), torch.full((1, 1, 3, 3), value)] for _ in range(num_D)]


def test_d_hinge_loss_zero_when_confident():
    loss = d_hinge_loss(_constant_pred(2.0), _constant_pred(-2.0))
    assert loss.item() == 0.0, f"real=+2, fake=-2 should give 0, got {loss.item()}"


def test_d_hinge_loss_at_zero_predictions_is_two():
    loss = d_hinge_loss(_constant_pred(0.0), _constant_pred(0.0))
    assert loss.item() == pytest.approx(2.0), f"relu(1) + relu(1) = 2, got {loss.item()}"


def test_g_hinge_loss_is_negative_mean_fake():
    pred = [[torch.full((1, 1, 2, 2), 1.0)], [torch.full((1, 1, 2, 2), 3.0)]]
    assert g_hinge_loss(pred).item() == pytest.approx(-2.0), "expected -(1 + 3) / 2"


def test_g_hinge_loss_gradient_reaches_generator():
    torch.manual_seed(0)
    generator = nn.Conv2d(3, 3, 1)
    d = MultiscaleDiscriminator(3, ndf=4, n_layers=2, num_D=2)
    loss = g_hinge_loss(d(generator(torch.randn(1, 3, 32, 24))))
    loss.backward()
    grad = generator.weight.grad
    assert grad is not None and grad.abs().sum() > 0, "no gradient reached the generator weight"


def test_feature_matching_zero_for_equal_features():
    torch.manual_seed(0)
    real = MultiscaleDiscriminator(3, ndf=4, n_layers=2, num_D=2)(torch.randn(1, 3, 32, 24))
    fake = [[t.clone() for t in scale] for scale in real]
    assert feature_matching_loss(fake, real).item() == 0.0, "equal features must give 0"


def test_feature_matching_averages_layers_and_scales_and_ignores_prediction():
    zeros = [[torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3)] for _ in range(2)]
    # Scale 0: layer L1s 1 and 3 (mean 2); scale 1: 0 and 0; predictions differ but are ignored.
    fake = [
        [torch.ones(1, 2, 3, 3), torch.full((1, 2, 3, 3), 3.0), torch.full((1, 1, 3, 3), 9.0)],
        [torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), torch.full((1, 1, 3, 3), 9.0)],
    ]
    loss = feature_matching_loss(fake, zeros)
    assert loss.item() == pytest.approx(1.0), f"(2 + 0) / 2 = 1 expected, got {loss.item()}"


def test_feature_matching_does_not_backprop_into_real():
    real_param = torch.ones(1, 2, 3, 3, requires_grad=True)
    fake_param = torch.zeros(1, 2, 3, 3, requires_grad=True)
    pred_real = [[real_param * 1, torch.zeros(1, 1, 3, 3)]]
    pred_fake = [[fake_param * 1, torch.zeros(1, 1, 3, 3)]]
    feature_matching_loss(pred_fake, pred_real).backward()
    assert real_param.grad is None, "real features must be detached"
    assert fake_param.grad is not None, "fake features must get a gradient"


# ---------------------------------------------------------------------------------------------------
# VGG19 perceptual loss
# ---------------------------------------------------------------------------------------------------


def _random_vgg19_features_state() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision VGG19 `features` state dict (built on meta, then reset: the full
    model's own init of the 100M-parameter classifier would take seconds)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        features = torchvision.models.vgg19(weights=None).features
    features = features.to_empty(device="cpu")
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return features.state_dict()


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory) -> dict[str, str]:
    state = _random_vgg19_features_state()
    root = tmp_path_factory.mktemp("vgg")
    features_path, full_path = root / "features.pth", root / "full.pth"
    torch.save(state, features_path)
    full = {f"features.{k}": v for k, v in state.items()}
    full["classifier.6.bias"] = torch.zeros(1000)  # stands in for the (ignored) classifier
    torch.save(full, full_path)
    return {"features": str(features_path), "full": str(full_path)}


@pytest.fixture(scope="module")
def perceptual(vgg_files) -> PerceptualLoss:
    return PerceptualLoss(vgg_files["features"])


def test_load_vgg19_state_dict_accepts_both_key_styles(vgg_files):
    from_features = load_vgg19_state_dict(vgg_files["features"])
    from_full = load_vgg19_state_dict(vgg_files["full"])
    assert from_features.keys() == from_full.keys(), "both key styles should give the features' keys"
    assert all(torch.equal(from_features[k], from_full[k]) for k in from_features), "tensors differ"


def test_vgg_features_load_full_model_file(vgg_files):
    vgg = VGG19Features(vgg_files["full"])
    expected = load_vgg19_state_dict(vgg_files["features"])["0.weight"]
    assert torch.equal(vgg.slices[0][0].weight, expected), "first conv weight not taken from the file"


def test_load_vgg19_rejects_wrong_keys(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match=re.escape("bad.pth")):
        load_vgg19_state_dict(str(path))


def test_load_vgg19_rejects_wrong_shapes(tmp_path, vgg_files):
    state = load_vgg19_state_dict(vgg_files["features"])
    state["0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "shapes.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="wrong shape"):
        load_vgg19_state_dict(str(path))


def test_load_vgg19_rejects_non_checkpoint(tmp_path):
    path = tmp_path / "text.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=re.escape("text.pth")):
        load_vgg19_state_dict(str(path))


def test_vgg_features_are_frozen_and_stay_in_eval(perceptual):
    assert not any(p.requires_grad for p in perceptual.parameters()), "VGG parameters must be frozen"
    perceptual.train()
    assert not perceptual.vgg.training, "VGG must stay in eval mode after .train()"


def test_vgg_features_shapes(perceptual):
    outputs = perceptual.vgg(torch.zeros(1, 3, 32, 32))
    channels = [o.shape[1] for o in outputs]
    sides = [o.shape[2] for o in outputs]
    assert channels == [64, 128, 256, 512, 512], f"relu1_1..relu5_1 channels, got {channels}"
    assert sides == [32, 16, 8, 4, 2], f"relu1_1..relu5_1 sizes, got {sides}"


def test_perceptual_loss_zero_for_identical_images(perceptual):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert perceptual(x, x.clone()).item() == 0.0, "loss(x, x) must be 0"


def test_perceptual_loss_positive_and_differentiable(perceptual):
    torch.manual_seed(0)
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    loss = perceptual(x, y)
    loss.backward()
    assert loss.item() > 0, f"loss(x, y) should be > 0, got {loss.item()}"
    assert x.grad is not None and x.grad.abs().sum() > 0, "no gradient reached the input"


def test_perceptual_loss_default_weights():
    assert VGG_LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), "pix2pixHD VGG loss weights"


# ---------------------------------------------------------------------------------------------------
# Segmentation cross-entropy
# ---------------------------------------------------------------------------------------------------


def test_weighted_cross_entropy_hand_computed():
    prob = torch.tensor([0.8, 0.4]).reshape(1, 2, 1, 1)
    target = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    expected = -math.log(0.8 / (0.8 + 0.4))  # renormalised sigmoid, class 0
    got = weighted_cross_entropy(prob, target).item()
    assert got == pytest.approx(expected, rel=1e-5), f"expected {expected}, got {got}"


def test_weighted_cross_entropy_class_weights_weight_the_mean():
    # Two pixels: class 0 with p = 0.8 / 1.2, class 1 with p = 0.3 / 0.4; weights 1 and 3.
    prob = torch.tensor([[0.8, 0.1], [0.4, 0.3]]).reshape(1, 2, 1, 2)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    weights = torch.tensor([1.0, 3.0])
    expected = (1 * -math.log(0.8 / 1.2) + 3 * -math.log(0.3 / 0.4)) / 4
    got = weighted_cross_entropy(prob, target, weights).item()
    assert got == pytest.approx(expected, rel=1e-5), f"expected {expected}, got {got}"


def test_weighted_cross_entropy_survives_zero_probabilities():
    prob = torch.zeros(1, 3, 2, 2)
    target = torch.zeros(1, 3, 2, 2)
    target[:, 0] = 1
    loss = weighted_cross_entropy(prob, target)
    assert torch.isfinite(loss), "zeros must be clamped, not give inf/nan"


def test_weighted_cross_entropy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="target_onehot"):
        weighted_cross_entropy(torch.rand(1, 3, 2, 2), torch.rand(1, 4, 2, 2))


# ---------------------------------------------------------------------------------------------------
# TPS second-order constraint
# ---------------------------------------------------------------------------------------------------


def test_tps_second_order_zero_for_identity():
    assert tps_second_order_loss(torch.zeros(2, 50)).item() == 0.0, "theta = 0 must give 0"


def test_tps_second_order_zero_for_affine_offsets():
    g = 5
    torch.manual_seed(0)
    k = torch.arange(g * g, dtype=torch.float64)
    row, col = k // g, k % g
    theta = []
    for _ in range(2):  # two samples, each with its own affine map of the lattice position
        a = torch.randn(6, dtype=torch.float64) * 0.1
        theta.append(torch.cat((a[0] * row + a[1] * col + a[2], a[3] * row + a[4] * col + a[5])))
    loss = tps_second_order_loss(torch.stack(theta), grid_size=g).item()
    assert loss == pytest.approx(0.0, abs=1e-12), f"affine offsets must give 0, got {loss}"


def test_tps_second_order_positive_for_random_theta():
    torch.manual_seed(0)
    loss = tps_second_order_loss(torch.randn(2, 50) * 0.1).item()
    assert loss > 0, f"random offsets bend the grid, got {loss}"


def test_tps_second_order_hand_computed_bump():
    # One x offset of +1 in the lattice centre (row 2, col 2 -> k = 12) of a 5x5 grid.
    theta = torch.zeros(1, 50)
    theta[0, 12] = 1.0
    # Along rows: column 2 of the x map has second differences (1, -2, 1); along cols: row 2 the same.
    # Total |.| = 8 over 2 coords x 2 axes x 3 x 5 = 60 terms.
    loss = tps_second_order_loss(theta).item()
    assert loss == pytest.approx(8 / 60), f"expected 8/60, got {loss}"


def test_tps_second_order_rejects_wrong_theta_size():
    with pytest.raises(ValueError, match="grid_size"):
        tps_second_order_loss(torch.zeros(1, 49))
