"""labeler: active-learning image labeling with semi-supervised deep generative models."""

__version__ = "0.1.0"
