"""The small sequential baseline: Conv/Pool blocks then a dense head (as in many notebook projects)."""

from __future__ import annotations

from torch import nn


class SimpleCNN(nn.Module):
    """Four Conv-BN-ReLU-MaxPool blocks and global average pooling; ``num_features`` outputs.

    Args:
        in_chans: input channels.
        width: channels of the first block (doubled in each following block).
    """

    def __init__(self, in_chans: int = 1, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = in_chans
        for i in range(4):
            out = width * 2**i
            layers += [nn.Conv2d(chans, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            chans = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = chans

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)
