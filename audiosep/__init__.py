"""audiosep: efficient speech separation and recognition on PyTorch and Lightning."""

__version__ = "0.1.0"
