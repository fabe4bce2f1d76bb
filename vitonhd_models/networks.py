"""The three VITON-HD networks: segmentation generator, geometric matching module, ALIAS generator.

Written from the VITON-HD paper (Choi et al., CVPR 2021) and our contract
(`shared/research/vitonhd-contract.md` §1.8-§1.10, Appendix A). Module attribute names, layer
order and parameter shapes are chosen so that the official `seg_final.pth`, `gmm_final.pth` and
`alias_final.pth` state dicts load with `strict=True`; `tests/test_networks.py` pins every key and
shape against `vitonhd_models/data/official_state_dict_keys.tsv`.

Constructor options are keyword arguments with the official `test.py` defaults (no `opt` object).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import (
    spectral_norm,  # old hook-based form: keys weight_orig / weight_u / weight_v
)

# TPS control points and sampling grid span [-0.9, 0.9], not [-1, 1] (contract §1.9, TpsGridGen).
TPS_EXTENT = 0.9
# ALIASNorm hidden width of the shared conv (Appendix A: conv_shared.0 has 128 outputs).
ALIAS_NORM_HIDDEN = 128
# Per-scale feature width fed next to the upsampled activations in ALIASGenerator (conv_1..conv_7: 16 ch).
ALIAS_SCALE_FEATURES = 16
# Number of x2 upsamplings for each `num_upsampling_layers` choice (test.py choices normal / more / most).
NUM_UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}


_per_sample = threading.local()


@contextmanager
def per_sample_noise(generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Inside, ALIASNorm draws sample i's noise from `generators[i]` (this thread only), so a sample's
    output does not depend on the other samples of its batch. Outside, noise comes from the global RNG."""
    previous = getattr(_per_sample, "generators", None)
    _per_sample.generators = list(generators)
    try:
        yield
    finally:
        _per_sample.generators = previous


def gaussian_noise(b: int, w: int, h: int, like: torch.Tensor) -> torch.Tensor:
    """randn(b, w, h, 1) on `like`'s device and dtype; per sample inside `per_sample_noise`."""
    generators = getattr(_per_sample, "generators", None)
    if generators is None:
        return torch.randn(b, w, h, 1, device=like.device, dtype=like.dtype)
    if len(generators) != b:
        raise ValueError(f"per_sample_noise has {len(generators)} generators for a batch of {b}")
    draws = [torch.randn(1, w, h, 1, generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.cat(draws).to(device=like.device, dtype=like.dtype)


def init_weights(
    module: nn.Module, init_type: str = "xavier", gain: float = 0.02
) -> None:
    """Initialise conv/linear weights like the official `BaseNetwork.init_weights` (test.py defaults:
    init_type='xavier', init_variance=0.02). Irrelevant when official weights are loaded afterwards."""

    def _init(m: nn.Module) -> None:
        name = type(m).__name__
        if "BatchNorm2d" in name:
            if getattr(m, "weight", None) is not None:
                nn.init.normal_(m.weight, 1.0, gain)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias, 0.0)
        elif ("Conv" in name or "Linear" in name) and hasattr(m, "weight"):
            weight = m.weight_orig if hasattr(m, "weight_orig") else m.weight
            if init_type == "normal":
                nn.init.normal_(weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(weight, gain=gain)
            elif init_type == "xavier_uniform":
                nn.init.xavier_uniform_(weight, gain=1.0)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(weight, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(weight, gain=gain)
            elif init_type == "none":
                m.reset_parameters()
            else:
                raise ValueError(f"unknown init_type {init_type!r}")
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias, 0.0)

    module.apply(_init)


# ---------------------------------------------------------------------------------------------------
# Segmentation generator (U-Net, 256x192, sigmoid output)
# ---------------------------------------------------------------------------------------------------


def _conv_in_relu(in_nc: int, out_nc: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_nc, out_nc, 3, padding=1),
        nn.InstanceNorm2d(out_nc),
        nn.ReLU(),
    ]


def _double_conv(in_nc: int, out_nc: int) -> nn.Sequential:
    """Conv3x3-IN-ReLU twice; convs land at Sequential indices 0 and 3."""
    return nn.Sequential(*_conv_in_relu(in_nc, out_nc), *_conv_in_relu(out_nc, out_nc))


def _up_conv(in_nc: int, out_nc: int) -> nn.Sequential:
    """Nearest x2 upsample then Conv3x3-IN-ReLU; the conv lands at Sequential index 1."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), *_conv_in_relu(in_nc, out_nc)
    )


class SegGenerator(nn.Module):
    """U-Net predicting the 13-group parse from cloth, masked cloth, parse-agnostic, pose and noise.

    Input (contract §1.8): 21 channels at 256x192; output: `output_nc` sigmoid maps in [0, 1].
    Instance norms are affine-free, so they hold no parameters.
    """

    def __init__(self, input_nc: int = 21, output_nc: int = 13, ngf: int = 64):
        super().__init__()
        # ngf = 64 gives the official widths 64..1024; smaller values make tiny models for tests.
        w1, w2, w3, w4, w5 = (ngf * 2**i for i in range(5))
        self.conv1 = _double_conv(input_nc, w1)
        self.conv2 = _double_conv(w1, w2)
        self.conv3 = _double_conv(w2, w3)
        self.conv4 = _double_conv(w3, w4)
        self.conv5 = _double_conv(w4, w5)
        self.up6 = _up_conv(w5, w4)
        self.conv6 = _double_conv(2 * w4, w4)
        self.up7 = _up_conv(w4, w3)
        self.conv7 = _double_conv(2 * w3, w3)
        self.up8 = _up_conv(w3, w2)
        self.conv8 = _double_conv(2 * w2, w2)
        self.up9 = _up_conv(w2, w1)
        self.conv9 = nn.Sequential(
            *_double_conv(2 * w1, w1), nn.Conv2d(w1, output_nc, 3, padding=1)
        )
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Encoder: max-pool between levels; dropout on the two deepest levels (contract §1.9).
        c1 = self.conv1(x)
        c2 = self.conv2(self.pool(c1))
        c3 = self.conv3(self.pool(c2))
        c4 = self.drop(self.conv4(self.pool(c3)))
        c5 = self.drop(self.conv5(self.pool(c4)))
        # Decoder: skip features first, upsampled features second in each concatenation.
        # (Concatenation order is not spelled out in the contract; skip-first is the usual U-Net
        # layout and must be confirmed against the official weights' behaviour.)
        c6 = self.conv6(torch.cat((c4, self.up6(c5)), 1))
        c7 = self.conv7(torch.cat((c3, self.up7(c6)), 1))
        c8 = self.conv8(torch.cat((c2, self.up8(c7)), 1))
        c9 = self.conv9(torch.cat((c1, self.up9(c8)), 1))
        return self.sigmoid(c9)


# ---------------------------------------------------------------------------------------------------
# Geometric matching module (CP-VTON style GMM with a TPS transform)
# ---------------------------------------------------------------------------------------------------


class FeatureExtraction(nn.Module):
    """4 x [Conv4x4 s2, ReLU, BN] (64..512), [Conv3x3 512, ReLU, BN], [Conv3x3 512, ReLU] (at ngf = 64).

    ReLU comes *before* BN (contract §1.9); convs at indices 0,3,6,9,12,15, BNs at 2,5,8,11,14.
    A 256x192 input gives a 512 x 16x12 feature map.
    """

    def __init__(self, input_nc: int, ngf: int = 64, num_layers: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        in_nc = input_nc
        top = ngf * 8  # 512 at the official ngf = 64
        for i in range(num_layers):
            out_nc = min(ngf * 2**i, top)
            layers += [
                nn.Conv2d(in_nc, out_nc, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.BatchNorm2d(out_nc),
            ]
            in_nc = out_nc
        layers += [nn.Conv2d(in_nc, top, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(top)]
        layers += [nn.Conv2d(top, top, 3, padding=1), nn.ReLU()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class FeatureCorrelation(nn.Module):
    """All-pairs dot products of two (b, c, h, w) maps -> (b, w*h, h, w) (contract §1.9)."""

    def forward(self, feature_a: torch.Tensor, feature_b: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feature_a.size()
        # Rows of A enumerate positions x-major (w outer, h inner), as in the official layout.
        a = feature_a.permute(0, 3, 2, 1).reshape(b, w * h, c)
        bm = feature_b.reshape(b, c, h * w)
        return torch.bmm(a, bm).reshape(b, w * h, h, w)


class FeatureRegression(nn.Module):
    """Correlation volume -> 2*grid_size**2 TPS offsets in [-1, 1] (tanh)."""

    def __init__(
        self, input_nc: int = 192, output_size: int = 50, linear_in: int = 768
    ):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(input_nc, 512, 4, stride=2, padding=1), nn.BatchNorm2d(512), nn.ReLU(),
            nn.Conv2d(512, 256, 4, stride=2, padding=1), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Conv2d(256, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        )  # fmt: skip
        self.linear = nn.Linear(linear_in, output_size)
        self.tanh = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.tanh(self.linear(x.reshape(x.size(0), -1)))


def _tps_radial(d2: torch.Tensor) -> torch.Tensor:
    """Thin-plate radial basis r^2 log r^2, with r = 0 mapped to 0 (the official sets d2 = 1 there)."""
    d2 = torch.where(d2 == 0, torch.ones_like(d2), d2)
    return d2 * torch.log(d2)


class TpsGridGen(nn.Module):
    """Thin-plate-spline sampling grid at (load_height, load_width) from control-point offsets.

    Control points: a grid_size x grid_size lattice over [-0.9, 0.9]^2. Following the official
    ordering (a meshgrid with swapped outputs, contract §1.9, kept so checkpoints agree), point k has
    x = coords[k // grid_size], y = coords[k % grid_size]; theta[:, :N] are x offsets and
    theta[:, N:] y offsets. All buffers are non-persistent, so nothing here is in the state dict.

    Numerics are the official module's, so the grid is bit-equal to it: every value in float32 (the
    sampling grid and control points are numpy's float64 linspace rounded to float32, the system
    L = [[K, P], [P^T, 0]] is inverted in float32), the weights are Li @ Q per forward, and a grid
    point is ((a0 + a1 x) + a2 y) + sum_i w_i U_i with U_i = d_i^2 log d_i^2. U depends on no input,
    so it is computed once, with the same float32 operations the official forward repeats.
    """

    def __init__(
        self, load_height: int = 1024, load_width: int = 768, grid_size: int = 5
    ):
        super().__init__()
        self.load_height, self.load_width, self.grid_size = (
            load_height,
            load_width,
            grid_size,
        )
        n = grid_size * grid_size
        coords = np.linspace(-TPS_EXTENT, TPS_EXTENT, grid_size)
        p_x = torch.tensor(np.repeat(coords, grid_size), dtype=torch.float32)  # x varies slowest
        p_y = torch.tensor(np.tile(coords, grid_size), dtype=torch.float32)  # y varies fastest
        grid_x = torch.tensor(np.linspace(-TPS_EXTENT, TPS_EXTENT, load_width), dtype=torch.float32)
        grid_y = torch.tensor(np.linspace(-TPS_EXTENT, TPS_EXTENT, load_height), dtype=torch.float32)
        # The TPS system over the control points, in float32.
        k = _tps_radial(
            torch.pow(p_x[:, None] - p_x[None, :], 2) + torch.pow(p_y[:, None] - p_y[None, :], 2)
        )
        p = torch.stack((torch.ones(n), p_x, p_y), 1)
        top = torch.cat((k, p), 1)
        bottom = torch.cat((p.t(), torch.zeros(3, 3)), 1)
        l_inv = torch.linalg.inv(torch.cat((top, bottom), 0))
        # U at every grid point and control point: (H, W, N).
        x = grid_x.reshape(1, load_width, 1).expand(load_height, load_width, n)
        y = grid_y.reshape(load_height, 1, 1).expand(load_height, load_width, n)
        u = _tps_radial(torch.pow(x - p_x, 2) + torch.pow(y - p_y, 2))
        self.register_buffer("l_inv", l_inv, persistent=False)
        self.register_buffer("radial", u, persistent=False)
        self.register_buffer("grid_x", grid_x.reshape(1, 1, load_width), persistent=False)
        self.register_buffer("grid_y", grid_y.reshape(1, load_height, 1), persistent=False)
        self.register_buffer("P_X", p_x, persistent=False)
        self.register_buffer("P_Y", p_y, persistent=False)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        """theta (b, 2N) offsets -> grid (b, H, W, 2) with (x, y) in the last dim, for grid_sample."""
        n, batch = self.grid_size * self.grid_size, theta.size(0)
        coordinates = []
        for offsets, base in ((theta[:, :n], self.P_X), (theta[:, n:], self.P_Y)):
            moved = (offsets + base).unsqueeze(2)  # (b, N, 1)
            weights = torch.bmm(self.l_inv[None, :n, :n].expand(batch, n, n), moved)[:, :, 0]  # (b, N)
            affine = torch.bmm(self.l_inv[None, n:, :n].expand(batch, 3, n), moved)[:, :, 0]  # (b, 3)
            bend = torch.sum(weights[:, None, None, :] * self.radial, 3)  # (b, H, W)
            a0, a1, a2 = (affine[:, i, None, None] for i in range(3))
            coordinates.append(a0 + a1 * self.grid_x + a2 * self.grid_y + bend)
        return torch.stack(coordinates, 3)


class GMM(nn.Module):
    """Geometric matching: person representation (7 ch) + cloth (3 ch) at 256x192 -> TPS grid at full size.

    Contract §1.8: inputA = cat(parse7[:, 2:3], pose, img_agnostic), inputB = the unmasked cloth, both
    nearest-downsampled to 256x192; the returned grid is (b, load_height, load_width, 2) and is used with
    `grid_sample(..., padding_mode='border')`.
    """

    def __init__(
        self,
        inputA_nc: int = 7,
        inputB_nc: int = 3,
        load_height: int = 1024,
        load_width: int = 768,
        grid_size: int = 5,
        ngf: int = 64,
    ):
        super().__init__()
        # The regression's two stride-2 convs need a feature map of at least 4x4, i.e. a 16x16 input
        # at load/4 (the official 256x192 at 1024x768).
        if load_height % 4 or load_width % 4 or min(load_height, load_width) < 256:
            raise ValueError(
                f"GMM needs load sizes that are multiples of 4 and at least 256, got {load_height}x{load_width}"
            )
        # Features come from a 256x192 input downsampled 16x -> (load_height // 64) x (load_width // 64).
        feat_h, feat_w = load_height // 64, load_width // 64
        self.extractionA = FeatureExtraction(inputA_nc, ngf=ngf)
        self.extractionB = FeatureExtraction(inputB_nc, ngf=ngf)
        self.correlation = FeatureCorrelation()
        self.regression = FeatureRegression(
            input_nc=feat_h * feat_w,
            output_size=2 * grid_size**2,
            linear_in=64 * (feat_h // 4) * (feat_w // 4),
        )
        self.gridGen = TpsGridGen(
            load_height=load_height, load_width=load_width, grid_size=grid_size
        )

    def forward(
        self, inputA: torch.Tensor, inputB: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (theta, warped_grid)."""
        # Channel-wise L2 normalisation of both feature maps before correlation, as in the CP-VTON GMM the
        # paper builds on (not spelled out in the contract).
        feature_a = F.normalize(self.extractionA(inputA), dim=1)
        feature_b = F.normalize(self.extractionB(inputB), dim=1)
        correlation = self.correlation(feature_a, feature_b)
        theta = self.regression(correlation)
        return theta, self.gridGen(theta)


# ---------------------------------------------------------------------------------------------------
# ALIAS generator
# ---------------------------------------------------------------------------------------------------


class MaskNorm(nn.Module):
    """Region-wise standardisation: the misaligned region and the rest are normalised separately.

    Each region is standardised with its own mean and variance (paper, "ALIAS normalization"). Done by
    filling the outside of the region with the region mean, instance-normalising, and rescaling by
    sqrt(region size / image size); pixels outside the region become 0, so the two halves add up.
    """

    def __init__(self, norm_nc: int):
        super().__init__()
        self.norm_layer = nn.InstanceNorm2d(norm_nc, affine=False)

    def _normalize_region(
        self, region: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        h, w = region.shape[2:]
        num_pixels = mask.sum((2, 3), keepdim=True)
        num_pixels = torch.where(
            num_pixels == 0, torch.ones_like(num_pixels), num_pixels
        )
        mu = region.sum((2, 3), keepdim=True) / num_pixels
        normalized = self.norm_layer(region + (1 - mask) * mu)
        return normalized * torch.sqrt(num_pixels / (h * w))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.detach()
        return self._normalize_region(x * mask, mask) + self._normalize_region(
            x * (1 - mask), 1 - mask
        )


class ALIASNorm(nn.Module):
    """Noise, parameter-free norm, then spatial modulation `normalized * (1 + gamma) + beta` from `seg`.

    norm_type 'aliasmask' uses MaskNorm (needs the misalignment mask); 'aliasinstance' uses an
    affine-free InstanceNorm2d.
    """

    def __init__(self, norm_type: str, norm_nc: int, label_nc: int, hidden_nc: int = ALIAS_NORM_HIDDEN):
        super().__init__()
        self.noise_scale = nn.Parameter(torch.zeros(norm_nc))
        if norm_type == "aliasmask":
            self.param_free_norm: nn.Module = MaskNorm(norm_nc)
        elif norm_type == "aliasinstance":
            self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        else:
            raise ValueError(
                f"norm_type must be 'aliasmask' or 'aliasinstance', got {norm_type!r}"
            )
        self.norm_type = norm_type
        self.conv_shared = nn.Sequential(
            nn.Conv2d(label_nc, hidden_nc, 3, padding=1), nn.ReLU()
        )
        self.conv_gamma = nn.Conv2d(hidden_nc, norm_nc, 3, padding=1)
        self.conv_beta = nn.Conv2d(hidden_nc, norm_nc, 3, padding=1)

    def forward(
        self,
        x: torch.Tensor,
        seg: torch.Tensor,
        misalign_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, _, h, w = x.size()
        # Per-channel scaled Gaussian noise: randn(b, w, h, 1) * scale -> (b, w, h, C) -> (b, C, h, w).
        noise = (
            gaussian_noise(b, w, h, x) * self.noise_scale
        ).transpose(1, 3)
        if self.norm_type == "aliasmask":
            if misalign_mask is None:
                raise ValueError("'aliasmask' normalisation needs misalign_mask")
            normalized = self.param_free_norm(x + noise, misalign_mask)
        else:
            normalized = self.param_free_norm(x + noise)
        actv = self.conv_shared(seg)
        return normalized * (1 + self.conv_gamma(actv)) + self.conv_beta(actv)


class ALIASResBlock(nn.Module):
    """Residual block of two ALIASNorm-LeakyReLU-Conv3x3 steps; learned 1x1 shortcut iff in != out.

    conv_0, conv_1 and conv_s carry the hook-based spectral norm when norm_G starts with 'spectral'.
    With use_mask_norm the norms are 'aliasmask' and see label_nc = semantic_nc + 1 channels.
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        semantic_nc: int = 7,
        use_mask_norm: bool = True,
        norm_G: str = "spectralaliasinstance",
        norm_hidden: int = ALIAS_NORM_HIDDEN,
    ):
        super().__init__()
        self.learned_shortcut = input_nc != output_nc
        middle_nc = min(input_nc, output_nc)
        self.conv_0 = nn.Conv2d(input_nc, middle_nc, 3, padding=1)
        self.conv_1 = nn.Conv2d(middle_nc, output_nc, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(input_nc, output_nc, 1, bias=False)

        subnorm_type = norm_G
        if subnorm_type.startswith("spectral"):
            subnorm_type = subnorm_type[len("spectral") :]
            self.conv_0 = spectral_norm(self.conv_0)
            self.conv_1 = spectral_norm(self.conv_1)
            if self.learned_shortcut:
                self.conv_s = spectral_norm(self.conv_s)
        label_nc = semantic_nc
        if use_mask_norm:
            subnorm_type = "aliasmask"
            label_nc = semantic_nc + 1
        self.norm_0 = ALIASNorm(subnorm_type, input_nc, label_nc, norm_hidden)
        self.norm_1 = ALIASNorm(subnorm_type, middle_nc, label_nc, norm_hidden)
        if self.learned_shortcut:
            self.norm_s = ALIASNorm(subnorm_type, input_nc, label_nc, norm_hidden)
        self.relu = nn.LeakyReLU(0.2)

    def forward(
        self,
        x: torch.Tensor,
        seg: torch.Tensor,
        misalign_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        size = x.shape[2:]
        seg = F.interpolate(seg, size=size, mode="nearest")
        if misalign_mask is not None:
            misalign_mask = F.interpolate(misalign_mask, size=size, mode="nearest")
        if self.learned_shortcut:
            x_s = self.conv_s(self.norm_s(x, seg, misalign_mask))
        else:
            x_s = x
        dx = self.conv_0(self.relu(self.norm_0(x, seg, misalign_mask)))
        dx = self.conv_1(self.relu(self.norm_1(dx, seg, misalign_mask)))
        return x_s + dx


class ALIASGenerator(nn.Module):
    """Coarse-to-fine generator: 9-ch input (agnostic image, pose, warped cloth) -> RGB in [-1, 1].

    The input is resampled (nearest) to every block's resolution and mapped by conv_i to features
    concatenated with the upsampled activations. head/G_middle/up_0/up_1 use MaskNorm with
    seg_div (8 ch) + misalign_mask; up_2..up_4 use InstanceNorm with the 7-ch seg (contract §1.9).
    """

    def __init__(
        self,
        input_nc: int = 9,
        semantic_nc: int = 7,
        ngf: int = 64,
        num_upsampling_layers: str = "most",
        load_height: int = 1024,
        load_width: int = 768,
        norm_G: str = "spectralaliasinstance",
        norm_hidden: int = ALIAS_NORM_HIDDEN,
    ):
        super().__init__()
        if num_upsampling_layers not in NUM_UPSAMPLINGS:
            raise ValueError(
                f"num_upsampling_layers must be one of {sorted(NUM_UPSAMPLINGS)}"
            )
        self.num_upsampling_layers = num_upsampling_layers
        n_up = NUM_UPSAMPLINGS[num_upsampling_layers]
        if load_height % 2**n_up or load_width % 2**n_up:
            raise ValueError(
                f"ALIASGenerator with num_upsampling_layers={num_upsampling_layers!r} needs load sizes that are "
                f"multiples of {2**n_up}, got {load_height}x{load_width}"
            )
        self.sh, self.sw = load_height // 2**n_up, load_width // 2**n_up
        nf = ngf
        extra = ALIAS_SCALE_FEATURES

        self.conv_0 = nn.Conv2d(input_nc, 16 * nf, 3, padding=1)
        for i in range(1, 8):
            self.add_module(f"conv_{i}", nn.Conv2d(input_nc, extra, 3, padding=1))

        def block(in_nc: int, out_nc: int, mask: bool = True) -> ALIASResBlock:
            return ALIASResBlock(
                in_nc,
                out_nc,
                semantic_nc=semantic_nc,
                use_mask_norm=mask,
                norm_G=norm_G,
                norm_hidden=norm_hidden,
            )

        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf + extra, 16 * nf)
        self.G_middle_1 = block(16 * nf + extra, 16 * nf)
        self.up_0 = block(16 * nf + extra, 8 * nf)
        self.up_1 = block(8 * nf + extra, 4 * nf)
        self.up_2 = block(4 * nf + extra, 2 * nf, mask=False)
        self.up_3 = block(2 * nf + extra, nf, mask=False)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = block(nf + extra, nf // 2, mask=False)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.relu = nn.LeakyReLU(0.2)
        self.tanh = nn.Tanh()

    def _with_features(
        self, x: torch.Tensor, inp: torch.Tensor, index: int
    ) -> torch.Tensor:
        """cat(x, conv_index(inp resampled nearest to x's size))."""
        sample = F.interpolate(inp, size=x.shape[2:], mode="nearest")
        return torch.cat((x, getattr(self, f"conv_{index}")(sample)), 1)

    def forward(
        self,
        x: torch.Tensor,
        seg: torch.Tensor,
        seg_div: torch.Tensor,
        misalign_mask: torch.Tensor,
    ) -> torch.Tensor:
        # Block resolutions for 'most' (1024x768): 8x6, 16x12, 32x24, 64x48, ..., 1024x768; the per-scale
        # input samples are taken at exactly those sizes, so resampling to x's size is the same thing.
        inp = x
        x = self.conv_0(F.interpolate(inp, size=(self.sh, self.sw), mode="nearest"))
        x = self.head_0(x, seg_div, misalign_mask)
        x = self.up(x)
        x = self.G_middle_0(self._with_features(x, inp, 1), seg_div, misalign_mask)
        if self.num_upsampling_layers in ("more", "most"):
            x = self.up(x)
        x = self.G_middle_1(self._with_features(x, inp, 2), seg_div, misalign_mask)
        x = self.up(x)
        x = self.up_0(self._with_features(x, inp, 3), seg_div, misalign_mask)
        x = self.up(x)
        x = self.up_1(self._with_features(x, inp, 4), seg_div, misalign_mask)
        x = self.up(x)
        x = self.up_2(self._with_features(x, inp, 5), seg)
        x = self.up(x)
        x = self.up_3(self._with_features(x, inp, 6), seg)
        if self.num_upsampling_layers == "most":
            x = self.up(x)
            x = self.up_4(self._with_features(x, inp, 7), seg)
        return self.tanh(self.conv_img(self.relu(x)))
