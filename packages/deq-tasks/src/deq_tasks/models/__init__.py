"""Models of the JIIO tasks: the MDEQ-style decoder (generative, inverse), the MDEQ classifier (adversarial), the
context DEQ (meta-learning) and the small feature network used for Fréchet distances."""

from .decoder import DecoderLayer, MDEQDecoder
from .features import DigitFeatures, frechet_distance, train_feature_net

__all__ = ["DecoderLayer", "DigitFeatures", "MDEQDecoder", "frechet_distance", "train_feature_net"]
