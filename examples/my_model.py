"""A user's own model in a file: condensa loads it as ``examples/my_model.py:build``."""

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def build(num_classes: int = 10, width: int = 24) -> nn.Module:
    return TinyNet(num_classes, width)
