"""Offline evaluation for the synthetic shapes domain: attribute detector, pixel metrics, FVD (DESIGN.md §7)."""

from .detector import detect_attributes
from .fvd import compute_fvd, feature_statistics, frechet_distance, i3d_features, load_i3d, preprocess_for_i3d
from .metrics import (
    border_energy_profile,
    grain_ratio,
    high_frequency_energy,
    level_consistency,
    prompt_following_accuracy,
    seam_score,
    temporal_flicker,
    tile_edges,
)

__all__ = [
    "border_energy_profile",
    "compute_fvd",
    "detect_attributes",
    "feature_statistics",
    "frechet_distance",
    "grain_ratio",
    "high_frequency_energy",
    "i3d_features",
    "level_consistency",
    "load_i3d",
    "preprocess_for_i3d",
    "prompt_following_accuracy",
    "seam_score",
    "temporal_flicker",
    "tile_edges",
]
