"""offramp: early-exit transformer classifiers on stock Hugging Face encoders."""

__version__ = "0.1.0"
