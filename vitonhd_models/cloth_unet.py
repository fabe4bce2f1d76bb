"""ClothUNet: the small U-Net behind the cloth mask stage's model option (`tasks.stages.cloth_mask.UNetClothMasker`)."""

from __future__ import annotations

import torch
from torch import nn


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ClothUNet(nn.Module):
    """A small U-Net: 3-channel RGB in, 1-channel garment probability (sigmoid) out, same size.

    `depth` poolings of 2, so height and width must be multiples of 2**depth (16 by default).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 16, depth: int = 4):
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoders.append(_DoubleConv(previous, width))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamples.append(nn.ConvTranspose2d(width * 2, width, kernel_size=2, stride=2))
            self.decoders.append(_DoubleConv(width * 2, width))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, encoder in enumerate(self.encoders):
            x = encoder(x)
            if index < self.depth:
                skips.append(x)
                x = self.pool(x)
        for upsample, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return torch.sigmoid(self.head(x))
