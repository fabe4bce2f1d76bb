"""Evaluation metrics on uint8 RGB images (H, W, 3), and a NaN-aware summary of per-image values.

SSIM follows HR-VITON's `evaluate.py` (contract §2.8): grayscale via PIL, skimage's
`structural_similarity` with data_range 255, Gaussian weights and population covariance.

LPIPS (net-lin, AlexNet; our own implementation of Zhang et al., CVPR 2018) and FID (Heusel et al.,
NeurIPS 2017, on torchvision's Inception v3) need weight files given as local paths; nothing here
downloads anything.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from skimage.metrics import structural_similarity
from torch import nn

from vitonhd_models.weights import check_state, read_state_dict

# 8-bit images: the SSIM data range and the divisor that puts L1 into [0, 1] units.
UINT8_MAX = 255


def _check_rgb_pair(pred_rgb: np.ndarray, target_rgb: np.ndarray) -> None:
    for name, a in (("pred_rgb", pred_rgb), ("target_rgb", target_rgb)):
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"{name} must be a uint8 (H, W, 3) RGB image, got {a.dtype} {a.shape}")
    if pred_rgb.shape != target_rgb.shape:
        raise ValueError(f"pred_rgb and target_rgb differ in shape: {pred_rgb.shape} vs {target_rgb.shape}")


def ssim_gray(pred_rgb: np.ndarray, target_rgb: np.ndarray) -> float:
    """SSIM of the two images converted to grayscale with PIL `convert('L')` (contract §2.8).

    Images need at least 11 pixels per side (the 11-tap Gaussian window); skimage raises otherwise.
    """
    _check_rgb_pair(pred_rgb, target_rgb)
    pred = np.asarray(Image.fromarray(pred_rgb).convert("L"))
    target = np.asarray(Image.fromarray(target_rgb).convert("L"))
    return float(
        structural_similarity(
            pred, target, data_range=UINT8_MAX, gaussian_weights=True, use_sample_covariance=False
        )
    )


def masked_l1_uint8(pred_rgb: np.ndarray, target_rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference in [0, 1] units over the pixels of `mask` (H, W) and all channels.

    mask None means the whole image; an empty mask gives NaN (no pixels, no value).
    """
    _check_rgb_pair(pred_rgb, target_rgb)
    diff = np.abs(pred_rgb.astype(np.int16) - target_rgb.astype(np.int16))
    if mask is not None:
        if mask.shape != pred_rgb.shape[:2]:
            raise ValueError(f"mask must be (H, W) = {pred_rgb.shape[:2]}, got {mask.shape}")
        diff = diff[mask.astype(bool)]
    if diff.size == 0:
        return math.nan
    return float(diff.mean() / UINT8_MAX)


def summarise(values: list[float]) -> dict:
    """{count, mean, std, min, max} over the non-NaN values; std is the population std (ddof 0).

    count is the number of non-NaN values; with none, the statistics are NaN.
    """
    kept = np.asarray(values, dtype=np.float64)
    kept = kept[~np.isnan(kept)]
    if kept.size == 0:
        return {"count": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {
        "count": int(kept.size),
        "mean": float(kept.mean()),
        "std": float(kept.std()),
        "min": float(kept.min()),
        "max": float(kept.max()),
    }


# ---------------------------------------------------------------------------------------------------
# Weight files
# ---------------------------------------------------------------------------------------------------


def _as_uint8_images(images: np.ndarray | Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    """An (N, H, W, 3) uint8 array or a sequence of (H, W, 3) uint8 arrays (sizes may differ) as a list."""
    listed = list(images)
    for i, a in enumerate(listed):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"{name}[{i}] must be a uint8 (H, W, 3) RGB image, got {got}")
    return listed


def _to_unit_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / UINT8_MAX  # a writable copy


# ---------------------------------------------------------------------------------------------------
# LPIPS (Zhang, Isola, Efros, Shechtman, Wang: "The Unreasonable Effectiveness of Deep Features as a
# Perceptual Metric", CVPR 2018), the "net-lin" variant on AlexNet, as HR-VITON evaluates it (§2.8).
# ---------------------------------------------------------------------------------------------------

# The LPIPS "scaling layer" (paper's reference code, `ScalingLayer`): inputs in [-1, 1] become
# (x - shift) / scale. These are the ImageNet mean and std carried over to [-1, 1] input
# (shift = 2 * mean - 1, scale = 2 * std), rounded as the authors ship them.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# torchvision `alexnet().features` indices of relu1..relu5, the layers LPIPS compares, and their widths.
ALEXNET_RELU_INDICES = (1, 4, 7, 9, 11)
LPIPS_CHANNELS = (64, 192, 384, 256, 256)
# Added to the channel norm before dividing (the reference code's `normalize_tensor` eps).
LPIPS_EPS = 1e-10
# Keys of the authors' v0.1 linear-layer file (`lin{i}.model` is Sequential(Dropout, Conv2d(C, 1, 1)).
LPIPS_LIN_KEY = "lin{}.model.1.weight"
# HR-VITON's evaluate.py resizes both images to 128x128 (torchvision `Resize` on PIL images, i.e. PIL
# bilinear) before LPIPS (contract §2.8).
LPIPS_SIZE = 128


def _alexnet_features_meta() -> nn.Sequential:
    """torchvision's AlexNet `features` on the meta device: the layout without allocating weights."""
    with torch.device("meta"):
        return torchvision.models.alexnet(weights=None).features


def load_alexnet_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a torchvision AlexNet state dict from a local file and return the `features` part.

    Accepts the full model's dict (`features.*` keys; `classifier.*` is ignored) or the features' own
    (`0.weight`, `0.bias`, ...). Raises ValueError naming `path` when the keys or shapes do not fit
    torchvision's AlexNet features. Never downloads anything.
    """
    loaded = read_state_dict(path)
    if any(k.startswith("features.") for k in loaded):
        # Keys outside features.* and classifier.* stay in, under their full names, to be reported.
        state = {k.removeprefix("features."): v for k, v in loaded.items() if not k.startswith("classifier.")}
    else:
        state = loaded
    expected = {k: tuple(v.shape) for k, v in _alexnet_features_meta().state_dict().items()}
    check_state(path, state, expected, "a torchvision AlexNet state dict")
    return state


def load_lpips_lin_weights(path: str) -> list[torch.Tensor]:
    """The five (1, C, 1, 1) LPIPS linear-layer weights, relu1 first, from the authors' v0.1 alex file.

    Raises ValueError naming `path` for other keys, other shapes or negative weights (the authors clamp
    them to >= 0 while training, which keeps the distance non-negative).
    """
    state = read_state_dict(path)
    expected = {LPIPS_LIN_KEY.format(i): (1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}
    check_state(path, state, expected, "an LPIPS v0.1 alex linear-layer state dict")
    weights = [state[LPIPS_LIN_KEY.format(i)].float() for i in range(len(LPIPS_CHANNELS))]
    negative = [LPIPS_LIN_KEY.format(i) for i, w in enumerate(weights) if bool((w < 0).any())]
    if negative:
        raise ValueError(f"{path} has negative LPIPS linear weights in {negative}")
    return weights


def _unit_normalise(features: torch.Tensor) -> torch.Tensor:
    """Divide each spatial position's feature vector (over channels) by its L2 norm plus LPIPS_EPS."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS)


class LPIPS(nn.Module):
    """LPIPS distance, "net-lin" variant on AlexNet (Zhang et al., CVPR 2018); our own implementation.

    `alexnet_weights` is a local torchvision AlexNet state dict (see `load_alexnet_state_dict`),
    `lin_weights` the authors' v0.1 alex linear-layer file (see `load_lpips_lin_weights`); nothing is
    downloaded. `forward(x, y)` takes two (b, 3, h, w) batches in [-1, 1] and returns the (b,) distances:
    scaling layer, AlexNet relu1..relu5, unit-normalise each feature over channels, squared difference,
    weighted sum over channels with the non-negative linear weights, mean over space, sum over layers.
    Frozen and always in eval mode; gradients still flow to the inputs.
    """

    def __init__(self, alexnet_weights: str, lin_weights: str):
        super().__init__()
        features = _alexnet_features_meta().to_empty(device="cpu")
        features.load_state_dict(load_alexnet_state_dict(alexnet_weights), strict=True)
        bounds = (0, *(i + 1 for i in ALEXNET_RELU_INDICES))
        self.slices = nn.ModuleList(features[start:end] for start, end in itertools.pairwise(bounds))
        self.lin = nn.ParameterList(load_lpips_lin_weights(lin_weights))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Always eval: a parent's `.train()` must not switch the frozen metric."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x and y must both be (b, 3, h, w), got {tuple(x.shape)} and {tuple(y.shape)}")
        n = x.shape[0]
        h = (torch.cat((x, y)) - self.shift) / self.scale  # one pass through AlexNet for both
        distance = x.new_zeros(n)
        for block, weight in zip(self.slices, self.lin, strict=True):
            h = block(h)
            diff = (_unit_normalise(h[:n]) - _unit_normalise(h[n:])).pow(2)
            distance = distance + (diff * weight).sum(dim=1).mean(dim=(1, 2))
        return distance


def _pil_resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def lpips_distance(
    model: LPIPS, pred_rgb_uint8: np.ndarray, target_rgb_uint8: np.ndarray, size: int = LPIPS_SIZE
) -> float:
    """LPIPS between two same-sized uint8 (H, W, 3) images, both first resized to size x size.

    As HR-VITON's evaluate.py (contract §2.8): PIL bilinear resize to 128x128 (what torchvision `Resize`
    does on PIL images), then [0, 1] -> [-1, 1]. Runs on the model's device, without gradients.
    """
    _check_rgb_pair(pred_rgb_uint8, target_rgb_uint8)
    device = model.shift.device
    pred, target = (
        _to_unit_tensor(_pil_resize_square(a, size)).to(device) * 2 - 1
        for a in (pred_rgb_uint8, target_rgb_uint8)
    )
    with torch.no_grad():
        return float(model(pred, target)[0])


# ---------------------------------------------------------------------------------------------------
# FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
# Equilibrium", NeurIPS 2017) on torchvision's Inception v3 pool features.
# ---------------------------------------------------------------------------------------------------

INCEPTION_SIZE = 299
INCEPTION_FEATURE_DIM = 2048
# torchvision's Inception v3 weights are Google's, ported, and the network proper expects x in [-1, 1]:
# torchvision's own recipe (ImageNet mean/std, then `transform_input=True`, the default with its
# weights) amounts to (x - 0.5) / 0.5 on [0, 1] input. We build it with transform_input=False and apply
# that normalisation ourselves (HR-VITON's evaluate.py does the same for its Inception Score).
INCEPTION_INPUT_MEAN = 0.5
INCEPTION_INPUT_STD = 0.5
# Parts of torchvision's Inception v3 state dict the pool features do not use.
INCEPTION_IGNORED_PREFIXES = ("fc.", "AuxLogits.")


def _inception_pool_meta() -> nn.Module:
    """torchvision's Inception v3 on the meta device with fc = identity and no auxiliary head: the
    layout of the 2048-d pool features, without allocating or initialising weights."""
    with torch.device("meta"):
        net = torchvision.models.inception_v3(
            weights=None, aux_logits=True, init_weights=False, transform_input=False
        )
    net.AuxLogits = None  # eval-mode forward never runs it
    net.fc = nn.Identity()
    return net


def load_inception_v3_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a torchvision Inception v3 state dict from a local file, without the `fc.*` and `AuxLogits.*`
    entries (ignored when present). BatchNorm `num_batches_tracked` counters may be absent (files saved
    before PyTorch 0.4.1 lack them; eval mode never reads them). Raises ValueError naming `path` when
    keys or shapes do not fit. Never downloads anything.
    """
    loaded = read_state_dict(path)
    expected = {k: tuple(v.shape) for k, v in _inception_pool_meta().state_dict().items()}
    state = {k: v for k, v in loaded.items() if not k.startswith(INCEPTION_IGNORED_PREFIXES)}
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    check_state(path, state, expected, "a torchvision Inception v3 state dict")
    return state


class InceptionFeatures(nn.Module):
    """The 2048-d pool features of torchvision's `inception_v3` (fc replaced by identity), frozen, eval.

    `weights_path` is a local torchvision Inception v3 state dict (see `load_inception_v3_state_dict`).
    These are torchvision's ImageNet Inception weights, NOT the TF-FID "pt_inception-2015-12-05" weights
    that pytorch-fid and clean-fid use: FIDs from this class are comparable across our own runs, but not
    with the FID numbers published in papers.

    `forward` takes (n, 3, h, w) images in [0, 1], resizes them to 299x299 (bilinear, antialiased, so
    downsizing does not alias), scales to [-1, 1] (see INCEPTION_INPUT_MEAN) and returns (n, 2048).
    """

    def __init__(self, weights_path: str):
        super().__init__()
        net = _inception_pool_meta().to_empty(device="cpu")
        net.load_state_dict(load_inception_v3_state_dict(weights_path), strict=True)
        self.net = net
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Always eval: BatchNorm must keep using the loaded running statistics."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be (n, 3, h, w), got {tuple(x.shape)}")
        if tuple(x.shape[2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(
                x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False, antialias=True
            )
        return self.net((x - INCEPTION_INPUT_MEAN) / INCEPTION_INPUT_STD)

    def embed(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """(n, 2048) float64 features of uint8 (H, W, 3) images (an (N, H, W, 3) array or a sequence of
        arrays, sizes may differ), `batch_size` images per forward pass, on the module's device."""
        listed = _as_uint8_images(images, "images")
        device = next(self.parameters()).device
        out = [np.zeros((0, INCEPTION_FEATURE_DIM))]
        for start in range(0, len(listed), batch_size):
            batch = torch.cat([self._resized(rgb) for rgb in listed[start : start + batch_size]])
            with torch.no_grad():
                out.append(self(batch.to(device)).double().cpu().numpy())
        return np.concatenate(out)

    @staticmethod
    def _resized(rgb: np.ndarray) -> torch.Tensor:
        x = _to_unit_tensor(rgb)
        return F.interpolate(
            x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False, antialias=True
        )


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """The Fréchet distance |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 @ sigma2)) of the
    Gaussians fitted to two feature sets (n_i, d), n_i >= 2, exactly, without a d x d sqrtm (a 2048x2048
    sqrtm took 1 to 1.5 minutes on our busy 2-core CPU; the tests check this against scipy's).

    With A_i = (X_i - mean_i) / sqrt(n_i - 1), sigma_i = A_i^T A_i, and the non-zero eigenvalues of
    sigma1 sigma2 = A1^T (A1 A2^T A2) equal those of (A1 A2^T)(A1 A2^T)^T, so tr(sqrtm(sigma1 sigma2)) is
    the sum of the singular values of A1 A2^T. When n_i > d, A_i = Q_i R_i (QR) and only R_i (d x d)
    matters, so the SVD is at most min(n, d) square. No eps and no complex parts are needed.
    """
    x1, x2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"need two (n, d) feature arrays of one d, got {x1.shape} and {x2.shape}")
    if x1.shape[0] < 2 or x2.shape[0] < 2:
        raise ValueError(
            f"need at least 2 samples per set for a covariance, got {x1.shape[0]} and {x2.shape[0]}"
        )
    d = x1.shape[1]
    mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
    a1 = (x1 - mu1) / math.sqrt(x1.shape[0] - 1)
    a2 = (x2 - mu2) / math.sqrt(x2.shape[0] - 1)
    r1 = np.linalg.qr(a1, mode="r") if a1.shape[0] > d else a1
    r2 = np.linalg.qr(a2, mode="r") if a2.shape[0] > d else a2
    trace_covmean = np.linalg.svd(r1 @ r2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a1**2).sum() + (a2**2).sum() - 2 * trace_covmean)


class FID:
    """Accumulates Inception pool features of real and generated images; `compute()` gives their FID.

    `inception` is an `InceptionFeatures` (shared, e.g. across evaluations) or the path of its weights;
    the caveat there applies: torchvision's ImageNet weights, so values compare across our runs only.
    FID is biased upwards for small sets: compare values computed from the same number of images.
    """

    def __init__(self, inception: InceptionFeatures | str, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.inception = (
            inception if isinstance(inception, InceptionFeatures) else InceptionFeatures(inception)
        )
        self.batch_size = batch_size
        self._real: list[np.ndarray] = []
        self._fake: list[np.ndarray] = []

    @property
    def num_real(self) -> int:
        return sum(len(f) for f in self._real)

    @property
    def num_fake(self) -> int:
        return sum(len(f) for f in self._fake)

    def update(
        self,
        real_uint8_batch: np.ndarray | Sequence[np.ndarray],
        fake_uint8_batch: np.ndarray | Sequence[np.ndarray],
    ) -> None:
        """Add real and generated uint8 (H, W, 3) images (an (N, H, W, 3) array or a sequence; either
        side may be empty)."""
        real = _as_uint8_images(real_uint8_batch, "real_uint8_batch")
        fake = _as_uint8_images(fake_uint8_batch, "fake_uint8_batch")
        self.update_features(
            self.inception.embed(real, self.batch_size), self.inception.embed(fake, self.batch_size)
        )

    def update_features(self, real_features: np.ndarray, fake_features: np.ndarray) -> None:
        """Add already computed (n, 2048) pool features (e.g. the real set's, cached across evaluations)."""
        for name, f in (("real_features", real_features), ("fake_features", fake_features)):
            if np.ndim(f) != 2 or np.shape(f)[1] != INCEPTION_FEATURE_DIM:
                raise ValueError(f"{name} must be (n, {INCEPTION_FEATURE_DIM}), got {np.shape(f)}")
        self._real.append(np.asarray(real_features, np.float64))
        self._fake.append(np.asarray(fake_features, np.float64))

    def compute(self) -> float:
        """FID between everything added so far; ValueError with fewer than 2 images on either side."""
        if self.num_real < 2 or self.num_fake < 2:
            raise ValueError(
                f"FID needs at least 2 real and 2 generated images, got {self.num_real} and {self.num_fake}"
            )
        return frechet_distance_from_features(np.concatenate(self._real), np.concatenate(self._fake))
