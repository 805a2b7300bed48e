"""Fréchet distance between Gaussians and Fréchet Video Distance with a local I3D TorchScript file (DESIGN.md §7).

No weights are downloaded. FVD follows the StyleGAN-V protocol: videos resized (shorter side to 224, bilinear) and
center-cropped to 224x224, scaled to [-1, 1], passed as ``[B, 3, F, 224, 224]`` to the I3D TorchScript detector with
``rescale=False, resize=False, return_features=True``; the Fréchet distance of the feature Gaussians is the FVD.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
I3D_KWARGS = {"rescale": False, "resize": False, "return_features": True}


def _symmetric(matrix) -> np.ndarray:
    m = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
    return (m + m.T) / 2


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix by eigen-decomposition (tiny negative eigenvalues clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    r"""Fréchet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``, computed with symmetric eigen-decompositions
    only (no scipy, no complex ``sqrtm``): ``S1^1/2 S2 S1^1/2`` is symmetric PSD, so its square root's trace is the
    sum of the square roots of its eigenvalues.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = _symmetric(sigma1), _symmetric(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"Shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}.")
    root1 = _psd_sqrt(s1)
    cross = np.linalg.eigvalsh(_symmetric(root1 @ s2 @ root1))
    trace_sqrt = float(np.sum(np.sqrt(np.clip(cross, 0.0, None))))
    distance = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
    return max(distance, 0.0)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of features ``[N, D]`` (N >= 2)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"Need features [N, D] with N >= 2, got shape {x.shape}.")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def load_i3d(i3d_path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load the I3D TorchScript detector; a FileNotFoundError says what to download when it is missing."""
    path = Path(i3d_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"I3D TorchScript file not found at {path}. FVD needs the Kinetics-400 I3D detector used by StyleGAN-V "
            f"(`i3d_torchscript.pt`, ~50 MB): download it from {I3D_URL} and pass its path as `i3d_path`."
        )
    with warnings.catch_warnings():  # the detector only exists as TorchScript; torch 2.13 deprecates torch.jit
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def preprocess_for_i3d(videos, resolution: int = 224) -> torch.Tensor:
    """``[N, F, H, W, 3]`` uint8 or float [0, 1] -> float32 ``[N, 3, F, resolution, resolution]`` in [-1, 1]."""
    x = torch.as_tensor(np.asarray(videos))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"Expected videos [N, F, H, W, 3], got shape {tuple(x.shape)}.")
    n, f, h, w, _ = x.shape
    scale = resolution / min(h, w)
    size = (max(resolution, math.ceil(h * scale)), max(resolution, math.ceil(w * scale)))
    frames = F.interpolate(x.reshape(n * f, h, w, 3).permute(0, 3, 1, 2), size=size, mode="bilinear")
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    frames = frames[:, :, top : top + resolution, left : left + resolution]
    frames = frames.reshape(n, f, 3, resolution, resolution).permute(0, 2, 1, 3, 4)  # (N, 3, F, R, R)
    return (frames * 2.0 - 1.0).contiguous()


@torch.no_grad()
def i3d_features(videos, detector, batch_size: int = 8, device: str | torch.device = "cpu") -> np.ndarray:
    """Detector features ``[N, D]`` of videos ``[N, F, H, W, 3]`` (preprocessed in batches to bound memory)."""
    features = []
    for i in range(0, len(videos), batch_size):
        batch = preprocess_for_i3d(videos[i : i + batch_size]).to(device)
        features.append(detector(batch, **I3D_KWARGS).float().reshape(len(batch), -1).cpu().numpy())
    return np.concatenate(features).astype(np.float64)


def compute_fvd(
    real_videos, fake_videos, i3d_path: str | os.PathLike, batch_size: int = 8, device: str | torch.device = "cpu"
) -> float:
    r"""Fréchet Video Distance between two sets of videos ``[N, F, H, W, 3]`` (uint8 or float in [0, 1]).

    Uses the I3D TorchScript file at `i3d_path` (see `load_i3d`); the usual protocol compares 16-frame clips and
    needs many videos per set (thousands) for a stable covariance. Both sets need at least 2 videos.
    """
    detector = load_i3d(i3d_path, device)
    mu_real, sigma_real = feature_statistics(i3d_features(real_videos, detector, batch_size, device))
    mu_fake, sigma_fake = feature_statistics(i3d_features(fake_videos, detector, batch_size, device))
    return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake)
