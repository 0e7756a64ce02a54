"""purrgan: train GANs that generate small images, watch them learn, and sample from the result."""

__version__ = "0.2.0"
__all__ = ["TrainedGenerator", "load_generator", "to_pil", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `purrgan --help` and `purrgan presets` must not wait for torch to load.
    if name in ("TrainedGenerator", "load_generator", "to_pil"):
        from . import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'purrgan' has no attribute {name!r}")
