"""The VITON-HD try-on pipeline of contract §1.8: segmentation, geometric matching, ALIAS generation.

Pure functions on batched tensors. Each step is its own function so training can run one network
with the others' outputs (ground truth or frozen networks) while inference chains all three:

    parse7                    = predict_parse7(seg, batch)            # 256x192 seg, 1024x768 parse
    warped_c, warped_cm, _    = warp_cloth(gmm, parse7, batch)        # TPS grid at full size
    output                    = generate(alias, parse7, warped_c, warped_cm, batch)

Channel order is load-bearing (contract §1.8); so are the resampling modes.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vitonhd_models.data import UPPER_GROUP_7, merge_13_to_7
from vitonhd_models.networks import GMM, ALIASGenerator, SegGenerator, per_sample_noise

# Contract §1.8: seg and GMM run at 256x192 for 1024x768, a quarter of the load size.
SEG_SCALE = 4
# Contract §1.8: tgm.image.GaussianBlur((15, 15), (3, 3)) on the upsampled seg output.
PARSE_BLUR_KERNEL = 15
PARSE_BLUR_SIGMA = 3.0
# Contract §1.8: utils.gen_noise draws cv2.randn(mean 0, std 255) into uint8 and divides by 255, so a
# pixel is 1 exactly when the draw saturates at 255 (about 15.9% of pixels).
NOISE_STD = 255.0


def seed_everything(seed: int) -> None:
    """Seed every RNG the pipeline draws from: torch (ALIAS noise, init), OpenCV (seg noise), numpy, random."""
    torch.manual_seed(seed)
    cv2.setRNGSeed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when PyTorch sees a GPU, else 'cpu'; 'cuda' without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but PyTorch sees no CUDA device")
    return device


def seg_size(load_hw: tuple[int, int]) -> tuple[int, int]:
    return load_hw[0] // SEG_SCALE, load_hw[1] // SEG_SCALE


def binary_noise(batch: int, height: int, width: int, seeds: Sequence[int] | None = None) -> torch.Tensor:
    """(batch, 1, h, w) float {0, 1} noise drawn with OpenCV's RNG, as the official gen_noise (§1.8).

    With `seeds`, sample i's map is drawn after `cv2.setRNGSeed(seeds[i])`, independent of its batch.
    """
    if seeds is None:
        draws = np.zeros((batch * height, width), dtype=np.uint8)
        cv2.randn(draws, 0.0, NOISE_STD)
        return torch.from_numpy((draws == 255).astype(np.float32)).reshape(batch, 1, height, width)
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    maps = []
    for seed in seeds:
        cv2.setRNGSeed(seed)
        maps.append(binary_noise(1, height, width))
    return torch.cat(maps)


def gaussian_kernel_2d(kernel_size: int = PARSE_BLUR_KERNEL, sigma: float = PARSE_BLUR_SIGMA) -> torch.Tensor:
    """The (k, k) float32 kernel of torchgeometry 0.1.2's GaussianBlur, with its rounding: each tap the
    float32 exp of a 0-d tensor holding float32(-(i - k // 2)^2 / (2 sigma^2)) (computed in double),
    the taps normalised by their float32 sum, the 2-D kernel their outer product."""
    half = kernel_size // 2
    exponents = torch.tensor([-((i - half) ** 2) / float(2 * sigma**2) for i in range(kernel_size)])
    taps = torch.stack([torch.exp(exponent) for exponent in exponents.unbind()])
    taps = taps / taps.sum()
    return torch.outer(taps, taps)


def gaussian_blur(x: torch.Tensor, kernel_size: int = PARSE_BLUR_KERNEL, sigma: float = PARSE_BLUR_SIGMA) -> torch.Tensor:
    """Depthwise Gaussian blur with zero padding, as the official test.py runs torchgeometry's
    GaussianBlur: one k x k convolution per channel, so the argmax after it sees the same values."""
    channels = x.shape[1]
    kernel = gaussian_kernel_2d(kernel_size, sigma).to(x.device, x.dtype).repeat(channels, 1, 1, 1)
    return F.conv2d(x, kernel, padding=kernel_size // 2, stride=1, groups=channels)


def onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(b, H, W) int labels -> (b, C, H, W) float one-hot."""
    return F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()


# ---- Segmentation ---------------------------------------------------------------------------------


def seg_input(batch: dict, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The 21-channel seg input at load/4: cm, c*cm, parse_agnostic (13), pose (3), noise (§1.8), bilinear."""
    cloth, cloth_mask = batch["cloth"], batch["cloth_mask"]
    size = seg_size(cloth.shape[2:])

    def down(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear")

    cm_down = down(cloth_mask)
    if noise is None:
        noise = binary_noise(cloth.shape[0], *size)
    return torch.cat(
        (cm_down, down(cloth * cloth_mask), down(batch["parse_agnostic"]), down(batch["pose"]), noise.to(cm_down)),
        1,
    )


def parse7_from_seg(seg_out: torch.Tensor, load_hw: tuple[int, int]) -> torch.Tensor:
    """Seg output (b, 13, h, w) -> one-hot 7-group parse (b, 7, H, W): upsample, blur, argmax, merge (§1.8)."""
    up = F.interpolate(seg_out, size=load_hw, mode="bilinear")
    labels = gaussian_blur(up).argmax(1)
    return merge_13_to_7(onehot(labels, seg_out.shape[1]))


def predict_parse7(seg: SegGenerator, batch: dict, noise: torch.Tensor | None = None) -> torch.Tensor:
    return parse7_from_seg(seg(seg_input(batch, noise)), batch["cloth"].shape[2:])


# ---- Geometric matching ---------------------------------------------------------------------------


def gmm_input(parse7: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputA, inputB) at load/4, nearest: cat(parse7 upper, pose, img_agnostic) (7 ch) and the cloth (§1.8)."""
    size = seg_size(parse7.shape[2:])

    def down(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="nearest")

    upper = parse7[:, UPPER_GROUP_7 : UPPER_GROUP_7 + 1]
    input_a = torch.cat((down(upper), down(batch["pose"]), down(batch["img_agnostic"])), 1)
    return input_a, down(batch["cloth"])


def warp(grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sample x through a TPS grid with border padding (contract §1.8)."""
    return F.grid_sample(x, grid.to(x.dtype), padding_mode="border", align_corners=False)


def warp_cloth(gmm: GMM, parse7: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(warped cloth, warped cloth mask, theta) for the cloth region of parse7."""
    theta, grid = gmm(*gmm_input(parse7, batch))
    return warp(grid, batch["cloth"]), warp(grid, batch["cloth_mask"]), theta


# ---- ALIAS generation ----------------------------------------------------------------------------


def misalignment(parse7: torch.Tensor, warped_cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(parse_div (8 ch), misalign mask (1 ch)): cloth region not covered by the warped mask (§1.8)."""
    upper = parse7[:, UPPER_GROUP_7 : UPPER_GROUP_7 + 1]
    misalign = (upper - warped_cm).clamp_min(0.0)
    parse_div = torch.cat((parse7, misalign), 1)
    parse_div[:, UPPER_GROUP_7 : UPPER_GROUP_7 + 1] -= misalign
    return parse_div, misalign


def generate(
    alias: ALIASGenerator, parse7: torch.Tensor, warped_c: torch.Tensor, warped_cm: torch.Tensor, batch: dict
) -> torch.Tensor:
    """The try-on image (b, 3, H, W) in [-1, 1] from cat(img_agnostic, pose, warped cloth) (§1.8)."""
    parse_div, misalign = misalignment(parse7, warped_cm)
    x = torch.cat((batch["img_agnostic"], batch["pose"], warped_c), 1)
    return alias(x, parse7, parse_div, misalign)


@dataclass
class TryOnNetworks:
    seg: SegGenerator
    gmm: GMM
    alias: ALIASGenerator

    def eval(self) -> TryOnNetworks:
        for net in (self.seg, self.gmm, self.alias):
            net.eval()
        return self

    def to(self, device: torch.device | str) -> TryOnNetworks:
        for net in (self.seg, self.gmm, self.alias):
            net.to(device)
        return self


def to_device(batch: dict, device: torch.device | str) -> dict:
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


@torch.no_grad()
def try_on(
    nets: TryOnNetworks, batch: dict, fp16: bool = False, seeds: Sequence[int] | None = None
) -> torch.Tensor:
    """Seg -> GMM -> ALIAS on one batch (tensors already on the networks' device); (b, 3, H, W) in [-1, 1].

    With fp16 (CUDA only) the seg and ALIAS generators run under autocast; the GMM and the TPS warp stay
    in float32, where half precision would move the grid by whole pixels at 1024x768.
    With `seeds` (one per sample), every random draw of sample i (the seg noise channel, the ALIAS noise)
    comes from seeds[i], so a pair renders the same whichever pairs share its batch; otherwise the
    global RNGs are used, as the official test.py.
    """
    device = batch["cloth"].device
    use_fp16 = fp16 and device.type == "cuda"
    noise = None
    context = contextlib.nullcontext()
    if seeds is not None:
        noise = binary_noise(len(seeds), *seg_size(batch["cloth"].shape[2:]), seeds=seeds)
        generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        context = per_sample_noise(generators)
    with context:
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_fp16):
            parse7 = predict_parse7(nets.seg, batch, noise).float()
        warped_c, warped_cm, _ = warp_cloth(nets.gmm, parse7, batch)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_fp16):
            output = generate(nets.alias, parse7, warped_c, warped_cm, batch)
    return output.float().clamp(-1.0, 1.0)


def pair_seed(seed: int, person: str, cloth: str) -> int:
    """A pair's own seed, stable across runs, batches and processes."""
    digest = hashlib.sha256(f"{seed}\0{person}\0{cloth}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """(b, 3, H, W) in [-1, 1] -> (b, H, W, 3) uint8, as utils.save_images: (x + 1) * 0.5 * 255, clamped,
    then truncated (numpy astype), not rounded."""
    x = ((x.detach().float().cpu() + 1.0) * 0.5 * 255).clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()
