"""A small digit classifier whose penultimate features score generated digits (a Fréchet distance, FID-like).

Trained in the package on the same digits (no download, no Inception network), so the distance is only
comparable between models scored with the same classifier, in the same run.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deq_core import DeqInputError

__all__ = ["DigitFeatures", "frechet_distance", "train_feature_net"]


class DigitFeatures(nn.Module):
    """``conv(1->16, s2) - ReLU - conv(16->32, s2) - ReLU - mean pool - Linear(32->64) - ReLU`` = features; a
    ``Linear(64->10)`` on top classifies."""

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 4, features)
        self.out = nn.Linear(features, 10)

    def features(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        h = F.adaptive_avg_pool2d(h, 2).flatten(1)
        return F.relu(self.fc(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.features(x))


def train_feature_net(images: Tensor, labels: Tensor, *, steps: int = 400, batch: int = 128, seed: int = 0,
                      lr: float = 3e-3) -> DigitFeatures:
    """Train :class:`DigitFeatures` with Adam on ``(images, labels)``; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitFeatures()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        loss = F.cross_entropy(net(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``(N, D)`` and ``b`` ``(M, D)``:
    ``||m_a - m_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})``.

    Example:
        >>> import torch
        >>> a = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> frechet_distance(a, a) < 1e-6
        True
    """
    from scipy import linalg

    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise DeqInputError(
            f"frechet_distance needs (N, D) and (M, D) features, got {tuple(a.shape)}, {tuple(b.shape)}")
    x, y = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    with warnings.catch_warnings():  # near-singular covariances (few samples): regularize as pytorch-fid does
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2.0 * covmean))
