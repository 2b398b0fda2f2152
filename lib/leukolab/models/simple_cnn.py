"""The "simplified CNN" baseline of the original ALL MLOps project: four conv blocks and a dense head."""

from torch import nn


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """Conv(32)-Conv(64)-Conv(128)-Conv(256), global average pooling, dropout, linear classifier."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.3):
        super().__init__()
        channels = [3, width, width * 2, width * 4, width * 8]
        self.features = nn.Sequential(*[_block(a, b) for a, b in zip(channels, channels[1:])])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[-1], num_classes))

    def forward(self, x):
        return self.head(self.features(x))
