"""purrgan: train GANs that generate small images, watch them learn, and sample from the result."""

__version__ = "0.2.0"
__all__ = ["train", "Run", "load_config", "TrainedGenerator", "load_generator", "to_pil", "__version__"]
_HOMES = {"train": "api", "Run": "api", "load_config": "config", "TrainedGenerator": "generate",
          "load_generator": "generate", "to_pil": "generate"}


def __getattr__(name: str):
    # Imported on first use: `purrgan --help` and `purrgan presets` must not wait for torch to load.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'purrgan' has no attribute {name!r}")
