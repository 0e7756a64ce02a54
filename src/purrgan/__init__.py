"""purrgan: train GANs that generate small images, watch them learn, and sample from the result."""

__version__ = "0.1.0"

from .generate import TrainedGenerator, load_generator, to_pil  # noqa: E402

__all__ = ["TrainedGenerator", "load_generator", "to_pil", "__version__"]
