"""A small stand-in feature extractor for the metric tests (the Inception weights are not downloadable here)."""

import torch


class PixelFeatures:
    """uint8 images -> a fixed random projection of 8x8 average-pooled pixels (64-d) and 10 'class' logits."""

    name = "standin"

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.projection = torch.randn(3 * 8 * 8, 64, generator=generator) / 8
        self.classes = torch.randn(64, 10, generator=generator)

    def __call__(self, images):
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 127.5 - 1, 8).flatten(1)
        features = x @ self.projection
        return {"features": features, "logits": features @ self.classes}


def make():
    return PixelFeatures()


class SlowFeatures(PixelFeatures):
    """The stand-in, taking $STANDIN_SECONDS (default 2) per batch: an evaluation that outlasts a collective timeout."""

    name = "standin-slow"

    def __call__(self, images):
        import os
        import time

        time.sleep(float(os.environ.get("STANDIN_SECONDS", "2")))
        return super().__call__(images)


def make_slow():
    return SlowFeatures()
