"""Example deq plugin: the heavy-ball (momentum) fixed-point solver :class:`HeavyBall`."""

from ._heavy_ball import HeavyBall

__all__ = ["HeavyBall"]
__version__ = "0.1.0"
