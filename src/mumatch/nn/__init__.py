"""Building blocks shared by the modules: encoders, discriminators, likelihoods."""

from ._encoders import MLPEncoder

__all__ = ["MLPEncoder"]
