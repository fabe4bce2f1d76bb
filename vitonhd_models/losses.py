"""Training objectives of VITON-HD (Choi et al., CVPR 2021): discriminators, GAN, feature-matching,
perceptual, segmentation and TPS-regularisation losses.

Written from the paper and the pix2pixHD / SPADE recipes it builds on (the official VITON-HD repo has no
training code, contract §1.11). Loss weights (lambda_feat, lambda_vgg, ...) are the caller's business;
every function here returns an unweighted scalar.

Discriminator outputs are `list[list[Tensor]]`: one list per scale, each holding every intermediate
feature map with the patch prediction last (pix2pixHD / SPADE `getIntermFeat` layout).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import spectral_norm

from vitonhd_models.networks import TPS_EXTENT
from vitonhd_models.weights import check_state, read_state_dict

# PatchGAN conv kernel and padding: pix2pixHD/SPADE use kw = 4, padw = ceil((kw - 1) / 2) = 2. With this
# padding a stride-2 conv maps n -> n // 2 + 1 and a stride-1 conv n -> n + 1, so maps never reach 0.
D_KERNEL = 4
D_PADDING = 2
# Widest discriminator layer (pix2pixHD: nf = min(nf * 2, 512)).
D_MAX_CHANNELS = 512
# Smallest input side any scale of the discriminator accepts: InstanceNorm2d needs more than one
# spatial element, and a 1-pixel input stays 1 pixel through the stride-2 convs.
D_MIN_INPUT_SIDE = 2
# Downsampling between discriminator scales (pix2pixHD MultiscaleDiscriminator).
D_DOWNSAMPLE = {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}

# torchvision `vgg19().features` indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (pix2pixHD Vgg19).
VGG_RELU_INDICES = (1, 6, 11, 20, 29)
# Per-layer weights of the perceptual loss, shallow to deep (pix2pixHD / SPADE VGGLoss).
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
# ImageNet channel statistics the torchvision VGG weights were trained with (torchvision docs).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DiscriminatorOutput = list[list[torch.Tensor]]


# ---------------------------------------------------------------------------------------------------
# Discriminators
# ---------------------------------------------------------------------------------------------------


def _d_conv(in_nc: int, out_nc: int, stride: int) -> nn.Module:
    return spectral_norm(nn.Conv2d(in_nc, out_nc, D_KERNEL, stride=stride, padding=D_PADDING))


class NLayerDiscriminator(nn.Module):
    """pix2pixHD/SPADE PatchGAN with spectral norm on every conv.

    Layers: conv s2 + LeakyReLU; (n_layers - 1) x [conv s2, InstanceNorm, LeakyReLU]; conv s1, InstanceNorm,
    LeakyReLU; conv s1 to 1 channel. `forward` returns all n_layers + 2 outputs, the patch prediction last.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        layers: list[nn.Module] = [nn.Sequential(_d_conv(input_nc, ndf, 2), nn.LeakyReLU(0.2))]
        nf = ndf
        for i in range(1, n_layers + 1):
            nf_prev, nf = nf, min(nf * 2, D_MAX_CHANNELS)
            stride = 2 if i < n_layers else 1
            layers.append(
                nn.Sequential(
                    _d_conv(nf_prev, nf, stride), nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2)
                )
            )
        layers.append(nn.Sequential(_d_conv(nf, 1, 1)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return outputs


class MultiscaleDiscriminator(nn.Module):
    """num_D PatchGANs; D_i sees the input average-pooled i times (3x3, stride 2)."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, num_D: int = 2):
        super().__init__()
        if num_D < 1:
            raise ValueError(f"num_D must be at least 1, got {num_D}")
        self.discriminators = nn.ModuleList(
            NLayerDiscriminator(input_nc, ndf=ndf, n_layers=n_layers) for _ in range(num_D)
        )

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        results = []
        for i, discriminator in enumerate(self.discriminators):
            if i > 0:
                x = F.avg_pool2d(x, **D_DOWNSAMPLE)
            if min(x.shape[2:]) < D_MIN_INPUT_SIDE:
                raise ValueError(
                    f"discriminator scale {i} would see a {tuple(x.shape[2:])} input; use a larger image "
                    f"or fewer scales (num_D={len(self.discriminators)})"
                )
            results.append(discriminator(x))
        return results


# ---------------------------------------------------------------------------------------------------
# GAN and feature-matching losses
# ---------------------------------------------------------------------------------------------------


def _check_scales(a: DiscriminatorOutput, b: DiscriminatorOutput) -> None:
    if not a or len(a) != len(b):
        raise ValueError(f"expected the same non-zero number of scales, got {len(a)} and {len(b)}")


def d_hinge_loss(pred_real: DiscriminatorOutput, pred_fake: DiscriminatorOutput) -> torch.Tensor:
    """Discriminator hinge loss: mean over scales of mean(relu(1 - real)) + mean(relu(1 + fake))."""
    _check_scales(pred_real, pred_fake)
    losses = [
        F.relu(1 - real[-1]).mean() + F.relu(1 + fake[-1]).mean()
        for real, fake in zip(pred_real, pred_fake, strict=True)
    ]
    return torch.stack(losses).mean()


def g_hinge_loss(pred_fake: DiscriminatorOutput) -> torch.Tensor:
    """Generator hinge loss: -mean(fake prediction), averaged over scales."""
    if not pred_fake:
        raise ValueError("pred_fake holds no scales")
    return torch.stack([-fake[-1].mean() for fake in pred_fake]).mean()


def feature_matching_loss(pred_fake: DiscriminatorOutput, pred_real: DiscriminatorOutput) -> torch.Tensor:
    """L1 between the discriminator's intermediate features of fake and real (real detached).

    pix2pixHD form: for each scale the mean over its intermediate layers (all but the prediction), then
    summed over scales and divided by num_D.
    """
    _check_scales(pred_fake, pred_real)
    per_scale = []
    for fake, real in zip(pred_fake, pred_real, strict=True):
        if len(fake) != len(real) or len(fake) < 2:
            raise ValueError(
                f"a scale needs the same >= 2 fake and real outputs, got {len(fake)}, {len(real)}"
            )
        layer_losses = [F.l1_loss(f, r.detach()) for f, r in zip(fake[:-1], real[:-1], strict=True)]
        per_scale.append(torch.stack(layer_losses).mean())
    return torch.stack(per_scale).sum() / len(pred_fake)


# ---------------------------------------------------------------------------------------------------
# VGG19 perceptual loss
# ---------------------------------------------------------------------------------------------------


def _vgg19_features_meta() -> nn.Sequential:
    """torchvision's VGG19 `features` on the meta device: the layout without allocating or initialising
    weights (the full model's random init alone takes seconds)."""
    with torch.device("meta"):
        return torchvision.models.vgg19(weights=None).features


def load_vgg19_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a torchvision VGG19 state dict from a local file and return the `features` part.

    Accepts the full model's dict (`features.*` keys; `classifier.*` is ignored) or the features' own
    (`0.weight`, `0.bias`, ...). Raises ValueError naming `path` when the file is not a state dict or its
    keys or shapes do not fit torchvision's VGG19 features. Never downloads anything.
    """
    loaded = read_state_dict(path)
    if any(k.startswith("features.") for k in loaded):
        state = {k.removeprefix("features."): v for k, v in loaded.items() if not k.startswith("classifier.")}
    else:
        state = dict(loaded)
    expected = {k: tuple(v.shape) for k, v in _vgg19_features_meta().state_dict().items()}
    check_state(path, state, expected, "a torchvision VGG19 state dict")
    return state


class VGG19Features(nn.Module):
    """Frozen VGG19 returning the relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 activations.

    Weights come from `weights_path` (see `load_vgg19_state_dict`); nothing is downloaded. Inputs are images
    in [-1, 1], converted here to ImageNet-normalised [0, 1] images. The module stays in eval mode.
    """

    def __init__(self, weights_path: str):
        super().__init__()
        features = _vgg19_features_meta().to_empty(device="cpu")
        features.load_state_dict(load_vgg19_state_dict(weights_path), strict=True)
        bounds = (0, *(i + 1 for i in VGG_RELU_INDICES))
        self.slices = nn.ModuleList(features[start:end] for start, end in itertools.pairwise(bounds))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        """Always eval: a parent's `.train()` must not switch the frozen feature extractor."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x + 1) / 2 - self.mean) / self.std
        outputs = []
        for block in self.slices:
            h = block(h)
            outputs.append(h)
        return outputs


class PerceptualLoss(nn.Module):
    """sum_i w_i * L1(vgg_i(x), vgg_i(y)) over relu1_1..relu5_1, with y as a fixed target (no gradient)."""

    def __init__(self, weights_path: str, layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS):
        super().__init__()
        if len(layer_weights) != len(VGG_RELU_INDICES):
            raise ValueError(f"need {len(VGG_RELU_INDICES)} layer weights, got {len(layer_weights)}")
        self.vgg = VGG19Features(weights_path)
        self.layer_weights = tuple(float(w) for w in layer_weights)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_features = self.vgg(x)
        with torch.no_grad():
            y_features = self.vgg(y)
        pairs = zip(self.layer_weights, x_features, y_features, strict=True)
        losses = [w * F.l1_loss(fx, fy) for w, fx, fy in pairs]
        return torch.stack(losses).sum()


# ---------------------------------------------------------------------------------------------------
# Segmentation and warping losses
# ---------------------------------------------------------------------------------------------------


def weighted_cross_entropy(
    prob: torch.Tensor,
    target_onehot: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Pixel-wise (optionally class-weighted) cross-entropy for the segmentation generator.

    The generator ends in a per-channel sigmoid, so `prob` (b, C, h, w) does not sum to 1 over channels.
    Treating log(prob) as logits, a softmax gives exp(log p_c) / sum_k exp(log p_k) = p_c / sum_k p_k:
    the sigmoid maps renormalised over channels. That is the distribution scored here (computed as a
    log-softmax of log(prob.clamp_min(eps)) for stability); renormalising never changes the argmax, so the
    predicted labels are those of `prob` itself. The target class is `target_onehot.argmax(1)`; with
    `class_weights` (C,) the mean is weighted as in `F.nll_loss`.
    """
    if prob.shape != target_onehot.shape or prob.dim() != 4:
        raise ValueError(
            f"prob and target_onehot must both be (b, C, h, w), got {tuple(prob.shape)} and "
            f"{tuple(target_onehot.shape)}"
        )
    log_prob = torch.log_softmax(torch.log(prob.clamp_min(eps)), dim=1)
    weight = None if class_weights is None else class_weights.to(log_prob)
    return F.nll_loss(log_prob, target_onehot.argmax(1), weight=weight)


def tps_second_order_loss(theta: torch.Tensor, grid_size: int = 5) -> torch.Tensor:
    """The second-order difference constraint on the TPS grid (VITON-HD paper, GMM loss).

    `theta` (b, 2 * grid_size**2) are the GMM's control-point offsets: x offsets first, then y offsets;
    point k sits at lattice (row k // grid_size, col k % grid_size) with base position
    x = coords[row], y = coords[col] (`networks.TpsGridGen`). The moved points are laid out as
    (b, 2, g, g) and the loss is the mean |p[i-1] - 2 p[i] + p[i+1]| along both lattice axes, for x and
    y. It is 0 exactly when the offsets are an affine function of the lattice position (no bending); the
    base lattice itself is linear, so it contributes nothing.
    """
    g = grid_size
    if g < 3:
        raise ValueError(f"second-order differences need grid_size >= 3, got {g}")
    if theta.dim() != 2 or theta.shape[1] != 2 * g * g:
        raise ValueError(f"theta must be (b, {2 * g * g}) for grid_size {g}, got {tuple(theta.shape)}")
    coords = torch.linspace(-TPS_EXTENT, TPS_EXTENT, g, dtype=theta.dtype, device=theta.device)
    base = torch.stack((coords[:, None].expand(g, g), coords[None, :].expand(g, g)))  # (2, g, g)
    points = theta.reshape(-1, 2, g, g) + base
    along_rows = points[:, :, :-2] - 2 * points[:, :, 1:-1] + points[:, :, 2:]
    along_cols = points[..., :-2] - 2 * points[..., 1:-1] + points[..., 2:]
    return torch.cat((along_rows.flatten(1), along_cols.flatten(1)), 1).abs().mean()
