"""`datasets`-backed video/text training data (DESIGN.md §5).

Sources: a folder of videos and images with ``metadata.jsonl`` or ``metadata.csv`` (columns ``file_name`` and
``text`` and/or ``label``), a dataset written by `datasets.Dataset.save_to_disk`, or a Hub dataset name. Items are
``{"video": float32 [C, F, H, W] in [-1, 1], "text": str, "label": int or -1}``. Images become still videos so that
image and video batches mix. Files that cannot be used are skipped and counted, never raised:
`VideoTextDataset.__getitem__` returns ``None`` and `collate_videos` drops it and counts it in ``num_skipped``.

Logging skips across processes (Accelerate)::

    skipped = torch.tensor(batch["num_skipped"], device=accelerator.device)
    total_skipped += accelerator.reduce(skipped, reduction="sum").item()  # same on every rank
    accelerator.log({"data/num_skipped": total_skipped}, step=global_step)

``num_skipped`` travels inside the batch because DataLoader workers are separate processes: the per-item reasons
in `VideoTextDataset.skipped` live in the process that decoded the item (the main one when ``num_workers=0``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .metadata import METADATA_FILES, check_rows, read_metadata  # noqa: F401 (METADATA_FILES: re-exported)
from .video_io import IMAGE_EXTENSIONS, count_frames, read_clip, read_frames

__all__ = [
    "IMAGE_EXTENSIONS",
    "METADATA_FILES",
    "VideoTextDataset",
    "collate_videos",
    "load_hub_video_dataset",
    "load_video_dataset",
    "read_frames",
    "resize_frames",
]

logger = logging.getLogger(__name__)

MEDIA_COLUMNS = ("file_name", "video", "image")


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Center-crop ``[F, C, H, W]`` to the target aspect ratio, then resize with antialiasing (area when shrinking)."""
    src_h, src_w = frames.shape[-2:]
    if src_w * height > src_h * width:  # too wide
        crop_h, crop_w = src_h, max(1, round(src_h * width / height))
    else:
        crop_h, crop_w = max(1, round(src_w * height / width)), src_w
    top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
    frames = frames[..., top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) == (height, width):
        return frames
    if crop_h >= height and crop_w >= width:
        return F.interpolate(frames, size=(height, width), mode="area")
    return F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def _stream_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one (seed, epoch, index) triple."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


class VideoTextDataset(Dataset):
    r"""Map-style torch dataset over a `datasets.Dataset` of (media, text, label) records.

    Args:
        records (`datasets.Dataset`): one row per video or image, with `media_column` holding a path (relative to
            `root` or absolute) or a ``{"path", "bytes"}`` dict, and optional `text_column` / `label_column`.
        root (`Path`, *optional*): folder that relative paths are resolved against.
        num_frames, height, width (`int`): output clip size.
        frame_stride (`int`): keep every `frame_stride`-th frame; a clip spans ``(num_frames - 1) * frame_stride + 1``
            source frames, and a shorter video is skipped.
        seed (`int`): the temporal crop of item i in epoch e depends only on ``(seed, e, i)`` (see `set_epoch`).
        random_temporal_crop (`bool`): random start if True, else the centred clip.
        label_names (`list[str]`, *optional*): when labels are strings, their index in this list is the label.
        cache_frames (`bool`): keep every decoded video in memory (uint8) so each file is decoded once per process;
            worth it for small datasets (2000 clips of 16x64x64 take ~400 MB), where decoding dominates a step.
    """

    def __init__(
        self,
        records,
        root: str | os.PathLike | None = None,
        num_frames: int = 16,
        height: int = 64,
        width: int = 64,
        frame_stride: int = 1,
        seed: int = 0,
        random_temporal_crop: bool = True,
        media_column: str = "file_name",
        text_column: str = "text",
        label_column: str = "label",
        label_names: list[str] | None = None,
        cache_frames: bool = False,
    ):
        if min(num_frames, height, width, frame_stride) < 1:
            raise ValueError(f"num_frames, height, width, frame_stride must be >= 1, got {num_frames, height, width}.")
        self.records = records
        self.root = Path(root) if root is not None else None
        self.num_frames, self.height, self.width = num_frames, height, width
        self.frame_stride, self.seed, self.random_temporal_crop = frame_stride, seed, random_temporal_crop
        self.media_column, self.text_column, self.label_column = media_column, text_column, label_column
        self.label_names = label_names
        self.epoch = 0
        self.skipped: dict[int, str] = {}  # index -> reason, for items decoded in this process
        self._frames: dict[int, np.ndarray] | None = {} if cache_frames else None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def clip_span(self) -> int:
        """Source frames covered by one clip."""
        return (self.num_frames - 1) * self.frame_stride + 1

    def set_epoch(self, epoch: int) -> None:
        """Select the temporal crops of this epoch (call it at the start of every epoch, on every process)."""
        self.epoch = epoch

    def temporal_start(self, index: int, num_source_frames: int) -> int:
        """First source frame of item `index`'s clip; ``0 <= start <= num_source_frames - clip_span``."""
        slack = num_source_frames - self.clip_span
        if not self.random_temporal_crop:
            return slack // 2
        generator = torch.Generator().manual_seed(_stream_seed(self.seed, self.epoch, index))
        return int(torch.randint(0, slack + 1, (1,), generator=generator))

    def _source(self, row: dict) -> tuple[str | bytes, str]:
        """(path or bytes, extension) of a record's media."""
        value = row[self.media_column]
        if isinstance(value, dict):
            path = value.get("path") or ""
            if value.get("bytes") is not None:
                return value["bytes"], Path(path).suffix or ".mp4"
            value = path
        if not value:
            raise ValueError("empty media path")
        path = Path(value)
        if not path.is_absolute() and self.root is not None:
            path = self.root / path
        return str(path), path.suffix

    def _skip(self, index: int, reason: str) -> None:
        if index not in self.skipped:
            logger.warning("Skipping item %d: %s", index, reason)
        self.skipped[index] = reason

    def __getitem__(self, index: int) -> dict | None:
        row = self.records[index]
        try:
            source, extension = self._source(row)
            clip = self._decode_clip(index, source, extension)
        except Exception as error:  # any decoder failure means "skip this file"
            message = str(error).strip().splitlines()
            self._skip(index, f"unreadable ({type(error).__name__}: {message[0] if message else ''})")
            return None
        if isinstance(clip, int):
            self._skip(index, f"too short ({clip} frames, clip needs {self.clip_span})")
            return None
        clip = torch.from_numpy(np.ascontiguousarray(clip))
        clip = resize_frames(clip.permute(0, 3, 1, 2).float(), self.height, self.width)  # (F, C, H, W)
        video = (clip / 127.5 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()  # (C, F, H, W)
        return {"video": video, "text": self._text(row), "label": self._label(row)}

    def _decode_clip(self, index: int, source: str | bytes, extension: str) -> np.ndarray | int:
        """uint8 ``[num_frames, H, W, 3]`` frames of item ``index``'s clip, or the video's frame count when it is too
        short. Without ``cache_frames`` only the clip is decoded (a seek, `read_clip`) when the container says how
        many frames it holds; otherwise the whole file, once (cached) or every time."""
        image = extension.lower() in IMAGE_EXTENSIONS
        total = None if image or self._frames is not None else count_frames(source, extension)
        if total is not None:
            if total < self.clip_span:
                return total
            start = self.temporal_start(index, total)
            return read_clip(source, start, self.num_frames, self.frame_stride, extension)
        frames = self._frames.get(index) if self._frames is not None else None
        if frames is None:
            frames = read_frames(source, extension)
            if self._frames is not None:
                self._frames[index] = frames
        if image:  # a still video
            frames = np.repeat(frames[:1], self.clip_span, axis=0)
        if frames.shape[0] < self.clip_span:
            return frames.shape[0]
        start = self.temporal_start(index, frames.shape[0])
        return frames[start : start + self.clip_span : self.frame_stride]

    def _text(self, row: dict) -> str:
        text = row.get(self.text_column)
        return "" if text is None else str(text)

    def _label(self, row: dict) -> int:
        label = row.get(self.label_column)
        if label is None or label == "":
            return -1
        if self.label_names is not None:
            return self.label_names.index(str(label))
        return int(label) if isinstance(label, int) else int(float(label))


def collate_videos(batch: list[dict | None]) -> dict:
    r"""Stack the usable items and count the skipped ones (``None``).

    Returns:
        `dict`: ``video`` float32 ``[B, C, F, H, W]`` (``[0]`` when every item was skipped: skip that step),
        ``text`` (list of B strings), ``label`` (LongTensor ``[B]``, -1 = unlabelled), ``num_skipped`` (int).
    """
    items = [item for item in batch if item is not None]
    num_skipped = len(batch) - len(items)
    if not items:
        return {
            "video": torch.empty(0),
            "text": [],
            "label": torch.empty(0, dtype=torch.long),
            "num_skipped": num_skipped,
        }
    return {
        "video": torch.stack([item["video"] for item in items]),
        "text": [item["text"] for item in items],
        "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "num_skipped": num_skipped,
    }


def _check_columns(columns, media_column: str | None, text_column: str, label_column: str, where: str) -> str:
    """The media column to use; a ValueError saying what to add when a required column is missing."""
    candidates = [media_column] if media_column else list(MEDIA_COLUMNS)
    media = next((c for c in candidates if c in columns), None)
    if media is None:
        raise ValueError(
            f"{where} has columns {sorted(columns)} but no media column: add `{candidates[0]}` "
            f"(or one of {list(MEDIA_COLUMNS)}) with each video's or image's path."
        )
    if text_column not in columns and label_column not in columns:
        raise ValueError(
            f"{where} has columns {sorted(columns)}: add a `{text_column}` column (captions) and/or a "
            f"`{label_column}` column (class labels)."
        )
    return media


def load_video_dataset(
    path_or_name: str | os.PathLike,
    num_frames: int = 16,
    height: int = 64,
    width: int = 64,
    frame_stride: int = 1,
    seed: int = 0,
    random_temporal_crop: bool = True,
    split: str | None = "train",
    media_column: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    cache_frames: bool = False,
    require_captions: bool | None = None,
) -> VideoTextDataset:
    r"""Open a video/text dataset for training.

    Args:
        path_or_name (`str` or `os.PathLike`): a folder with ``metadata.jsonl`` / ``metadata.csv`` (e.g. written by
            `generate_dataset`), a folder written by `save_to_disk`, or a Hub dataset name.
        split (`str`, *optional*): rows whose ``split`` column differs are dropped (metadata folders), or the split
            of a `DatasetDict` / Hub dataset. ``None`` keeps everything.
        media_column (`str`, *optional*): defaults to the first of ``file_name``, ``video``, ``image``.
        require_captions (`bool`, *optional*): every row must have a non-empty string in `text_column`. Default:
            when the data has that column. Pass ``False`` for class-conditional training (captions unused).
        Other arguments: see `VideoTextDataset`.

    Raises:
        `ValueError`: no metadata file in the folder, a broken metadata line, a row without a media path or (see
            ``require_captions``) a caption, or a required column is missing (the message says which and where).
    """
    import datasets

    path = Path(path_or_name)
    root = path
    rows_checked = False
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        records = datasets.load_from_disk(str(path))
        if isinstance(records, datasets.DatasetDict):
            records = records[split or next(iter(records))]
    elif path.is_dir():
        rows, source, lines = read_metadata(path)  # every row has every column (None where a row lacks one)
        if split is not None and rows and "split" in rows[0]:
            kept = [i for i, row in enumerate(rows) if row.get("split") in (None, split)]
            rows, lines = [rows[i] for i in kept], [lines[i] for i in kept]
        if not rows:
            raise ValueError(f"{source} has no rows{f' in split {split!r}' if split else ''}: add one per video.")
        columns = set(rows[0])
        media = _check_columns(columns, media_column, text_column, label_column, f"The metadata in {path}")
        captions = text_column if require_captions or (require_captions is None and text_column in columns) else None
        check_rows(rows, str(source), lines, media, captions)
        rows_checked = True
        records = datasets.Dataset.from_list(rows)
    else:
        records = datasets.load_dataset(str(path_or_name), split=split or "train")
        root = None

    return _video_text_dataset(
        records, root, f"Dataset {path_or_name}", num_frames, height, width, frame_stride, seed,
        random_temporal_crop, media_column, text_column, label_column, cache_frames,
        require_captions=None if rows_checked else require_captions, check_captions=not rows_checked,
    )  # fmt: skip


def load_hub_video_dataset(
    dataset_name: str,
    dataset_config_name: str | None = None,
    num_frames: int = 16,
    height: int = 64,
    width: int = 64,
    frame_stride: int = 1,
    seed: int = 0,
    random_temporal_crop: bool = True,
    split: str = "train",
    video_column: str | None = None,
    caption_column: str = "text",
    label_column: str = "label",
    cache_frames: bool = False,
    cache_dir: str | None = None,
) -> VideoTextDataset:
    r"""Open a dataset with `datasets.load_dataset` (a Hub dataset, or a local folder of data files such as
    ``train.jsonl`` / parquet), as diffusers' training scripts do with ``--dataset_name``.

    Args:
        dataset_name (`str`): Hub id (``"user/clips"``) or a local folder that `datasets.load_dataset` reads.
        dataset_config_name (`str`, *optional*): the dataset's configuration (``name=``).
        video_column (`str`, *optional*): the column with each video (a `datasets.Video` / `datasets.Image`
            feature, or a path relative to a local ``dataset_name`` folder); default the first of ``file_name``,
            ``video``, ``image``.
        caption_column (`str`): the column with the captions.
        cache_dir (`str`, *optional*): `datasets`' download cache.
        Other arguments: see `load_video_dataset`.

    Raises:
        `ValueError`: a named column is missing (the message lists the dataset's columns).
    """
    import datasets

    records = datasets.load_dataset(dataset_name, dataset_config_name, split=split, cache_dir=cache_dir)
    root = Path(dataset_name) if Path(dataset_name).is_dir() else None  # local data files: paths relative to it
    return _video_text_dataset(
        records, root, f"Dataset {dataset_name}", num_frames, height, width, frame_stride, seed,
        random_temporal_crop, video_column, caption_column, label_column, cache_frames,
    )  # fmt: skip


def _video_text_dataset(
    records, root, where, num_frames, height, width, frame_stride, seed, random_temporal_crop, media_column,
    text_column, label_column, cache_frames, require_captions=None, check_captions=True,
) -> VideoTextDataset:  # fmt: skip
    """Check the columns of a `datasets.Dataset` (and, with ``check_captions``, its captions as
    `load_video_dataset`'s ``require_captions`` says; media are checked when decoded), keep its media undecoded,
    and wrap it in `VideoTextDataset`."""
    import datasets

    media = _check_columns(records.column_names, media_column, text_column, label_column, where)
    has_text = text_column in records.column_names
    if check_captions and (require_captions or (require_captions is None and has_text)):
        rows = [{text_column: c} for c in (records[text_column] if has_text else [None] * len(records))]
        check_rows(rows, where, None, None, text_column)
    feature = records.features.get(media)
    if isinstance(feature, datasets.Video | datasets.Image):  # keep {"path", "bytes"}: we decode ourselves
        records = records.cast_column(media, type(feature)(decode=False))
    label_names = None
    if label_column in records.column_names:
        if not isinstance(records.features[label_column], datasets.ClassLabel) and not all(
            _is_int_like(v) for v in records[label_column]
        ):
            label_names = sorted({str(v) for v in records[label_column] if v is not None and v != ""})
    return VideoTextDataset(
        records,
        root=root,
        num_frames=num_frames,
        height=height,
        width=width,
        frame_stride=frame_stride,
        seed=seed,
        random_temporal_crop=random_temporal_crop,
        media_column=media,
        text_column=text_column,
        label_column=label_column,
        label_names=label_names,
        cache_frames=cache_frames,
    )


def _is_int_like(value) -> bool:
    if value is None or value == "" or isinstance(value, int):
        return True
    try:
        return float(value) == int(value)
    except (TypeError, ValueError):
        return False
