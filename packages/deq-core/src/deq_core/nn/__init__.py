"""Layer utilities for DEQs: weight reparameterizations that need no manual reset."""

from ._norm import frozen_weights, remove_norm, spectral_norm, weight_norm

__all__ = ["frozen_weights", "remove_norm", "spectral_norm", "weight_norm"]
