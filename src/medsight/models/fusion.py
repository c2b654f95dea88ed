"""Multimodal fusion: an image encoder's embedding beside a case's tabular features, one linear head."""

from __future__ import annotations

import torch
from torch import nn

from medsight.core.errors import InputError

__all__ = ["FusionNet"]


class FusionNet(nn.Module):
    """Late fusion of an image and a feature vector given as one flat tensor per case.

    The input ``(B, F + C*S*S)`` holds the ``F`` standardised features first, then the image's
    pixels; the encoder (any registered 2D classifier, its head made ``embedding`` wide) maps the
    image to an embedding, which is concatenated with the features and read by a linear head. One
    flat tensor keeps the training loop, the predictor and DDP unchanged.

    Args:
        encoder: ``(B, C, S, S) -> (B, embedding)``.
        features: How many tabular features lead each input.
        image_shape: ``(C, S, S)``.
        embedding: The encoder's output width.
        outputs: The head's outputs.
    """

    def __init__(
        self, encoder: nn.Module, features: int, image_shape: tuple[int, int, int], embedding: int, outputs: int
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.features = features
        self.image_shape = tuple(image_shape)
        self.head = nn.Linear(embedding + features, outputs)

    def extra_repr(self) -> str:
        return f"features={self.features}, image_shape={self.image_shape}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        if x.ndim != 2 or x.shape[1] != self.features + pixels:
            raise InputError(f"fusion input must be (B, {self.features} + {pixels}) (features, then the image's "
                             f"pixels); got {tuple(x.shape)}")  # fmt: skip
        image = x[:, self.features :].reshape(-1, *self.image_shape)
        embedded = self.encoder(image)
        return self.head(torch.cat([embedded.to(x.dtype), x[:, : self.features]], dim=1))
