"""Stop a run whose data yields nothing, and say when much of it is skipped.

Unusable items are skipped and counted (DESIGN §5), but a folder in which *every* video is unreadable used to skip
forever: every batch empty, no step taken, epoch after epoch. `SkipMonitor` sees the per-batch counts (summed over
processes, so every process decides the same) and raises once an epoch, or the first ``patience`` items of a run,
gave no usable item; at the end of each epoch it warns with the skip ratio when it is above ``warn_ratio``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class NoUsableDataError(ValueError):
    """The dataset yields no usable item."""


class SkipMonitor:
    r"""Counts used and skipped items per epoch and over the run.

    Args:
        dataset_size: items in the dataset (for the messages).
        warn_ratio: warn at the end of an epoch whose skipped fraction exceeds it.
        patience: raise when this many items in a row, from the start of the run, were all skipped (so a huge
            unreadable dataset stops without waiting for the end of its first epoch).
        reasons: optional ``{index: reason}`` of skipped items (`VideoTextDataset.skipped`) to quote in the error.
    """

    def __init__(self, dataset_size: int, warn_ratio: float = 0.1, patience: int = 1000, reasons: dict | None = None):
        self.dataset_size, self.warn_ratio, self.patience = dataset_size, warn_ratio, patience
        self.reasons = reasons if reasons is not None else {}
        self.used = self.skipped = 0  # this epoch
        self.total_used = self.total_skipped = 0

    def _error(self, seen: int, where: str) -> NoUsableDataError:
        examples = "; ".join(f"item {i}: {r}" for i, r in list(self.reasons.items())[:3])
        return NoUsableDataError(
            f"The training data yields no usable item: all {seen} items read {where} were skipped (dataset of "
            f"{self.dataset_size} items){f' - e.g. {examples}' if examples else ''}. Check --train_data_dir: the "
            "files must decode (mp4/gif/webm or images) and be at least as long as one clip "
            "(num_frames x frame_stride frames)."
        )

    def update(self, used: int, skipped: int) -> None:
        """Count one batch (numbers summed over processes); raise when nothing was usable for ``patience`` items."""
        self.used += used
        self.skipped += skipped
        self.total_used += used
        self.total_skipped += skipped
        if self.total_used == 0 and self.total_skipped >= self.patience:
            raise self._error(self.total_skipped, "since the start of the run")

    def end_epoch(self, epoch: int) -> None:
        """Raise when the epoch gave no usable item; warn with the skip ratio when it is high; reset the counts."""
        seen = self.used + self.skipped
        if seen and not self.used:
            raise self._error(seen, f"in epoch {epoch}")
        if seen and self.skipped / seen > self.warn_ratio:
            logger.warning(
                "Epoch %d skipped %d of %d items (%.0f%%): unreadable or too short files; the run trains on the rest.",
                epoch, self.skipped, seen, 100 * self.skipped / seen,
            )  # fmt: skip
        self.used = self.skipped = 0

    @property
    def ratio(self) -> float:
        """Skipped fraction over the run so far."""
        seen = self.total_used + self.total_skipped
        return self.total_skipped / seen if seen else 0.0
