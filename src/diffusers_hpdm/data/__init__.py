"""Training data: the synthetic shapes domain and `datasets`-backed video/text loading (DESIGN.md §5)."""

from .synthetic import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    HELDOUT_COMBINATIONS,
    SHAPES,
    SPEEDS,
    attribute_label,
    caption,
    generate_dataset,
    heldout_prompts,
    parse_prompt,
    render_video,
)
from .video_dataset import (
    VideoTextDataset,
    collate_videos,
    load_hub_video_dataset,
    load_video_dataset,
    read_frames,
    resize_frames,
)

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLOURS",
    "DIRECTIONS",
    "HELDOUT_COMBINATIONS",
    "SHAPES",
    "SPEEDS",
    "VideoTextDataset",
    "attribute_label",
    "caption",
    "collate_videos",
    "generate_dataset",
    "heldout_prompts",
    "load_hub_video_dataset",
    "load_video_dataset",
    "parse_prompt",
    "read_frames",
    "render_video",
    "resize_frames",
]
