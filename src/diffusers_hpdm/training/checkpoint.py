"""Crash-safe checkpoint directories: write ``checkpoint-N.tmp``, fsync, rename to ``checkpoint-N``.

A checkpoint exists only once its directory has its final name, and a rename within one filesystem is atomic, so
a process killed at any moment (even SIGKILL while writing) leaves either the previous complete checkpoints or a
``*.tmp`` directory that `list_checkpoints` (and so ``--resume_from_checkpoint latest``) ignores and the next run
removes. Old checkpoints are pruned only *after* a new one is committed.

Re-saving an existing step takes two renames (``checkpoint-N`` -> ``checkpoint-N.tmp.old``, then
``checkpoint-N.tmp`` -> ``checkpoint-N``): between them the complete previous copy lives under the ``.old`` name,
which `list_checkpoints` counts as step N and `remove_incomplete` renames back. Pruning renames a checkpoint to
``checkpoint-N.tmp.del`` before deleting it, so a kill mid-delete never leaves a ``checkpoint-N`` with some of its
files. So at every instant every committed step has one complete copy (tests/test_bad_input_training.py kills a
save at each of its file-system operations).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..io_atomic import fsync_dir

CHECKPOINT_PREFIX = "checkpoint-"
TMP_SUFFIX = ".tmp"
OLD_SUFFIX = TMP_SUFFIX + ".old"  # the previous copy of a step being re-saved
DELETE_SUFFIX = TMP_SUFFIX + ".del"  # a checkpoint being pruned
TRAINING_STATE_NAME = "training_state.json"
_NAME = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")
_OLD_NAME = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+){re.escape(OLD_SUFFIX)}$")


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)``, oldest first: directories named exactly ``checkpoint-N`` that hold a
    ``training_state.json`` (written last, before the rename), and the previous copy ``checkpoint-N.tmp.old`` of a
    step whose re-save was interrupted between its two renames."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found, orphans = {}, {}
    for child in root.iterdir():
        if not (child.is_dir() and (child / TRAINING_STATE_NAME).is_file()):
            continue
        if m := _NAME.match(child.name):
            found[int(m.group(1))] = child
        elif m := _OLD_NAME.match(child.name):
            orphans[int(m.group(1))] = child
    return sorted({**orphans, **found}.items())  # a step's committed copy wins over its previous one


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from: str | None) -> Path | None:
    """``"latest"`` -> `latest_checkpoint` (``None`` when there is none: start fresh); a path, or a checkpoint name
    inside ``output_dir`` -> that directory (``FileNotFoundError`` when it is not a complete checkpoint)."""
    if not resume_from:
        return None
    if resume_from == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume_from)
    if not path.is_dir():
        path = Path(output_dir) / resume_from
    if not (path / TRAINING_STATE_NAME).is_file():
        raise FileNotFoundError(
            f"{resume_from} is not a complete checkpoint (no {TRAINING_STATE_NAME}); complete ones in {output_dir}: "
            f"{[p.name for _, p in list_checkpoints(output_dir)]}. Use --resume_from_checkpoint latest."
        )
    return path


def remove_incomplete(output_dir: str | os.PathLike) -> list[Path]:
    """Clean up after interrupted saves (main process, before training): a ``checkpoint-N.tmp.old`` whose
    ``checkpoint-N`` is missing is renamed back to it (it is that step's only complete copy); other
    ``checkpoint-*.tmp*`` leftovers are deleted. Returns the deleted paths."""
    root = Path(output_dir)
    removed = []
    if not root.is_dir():
        return removed
    for child in sorted(root.iterdir()):
        m = _OLD_NAME.match(child.name)
        final = checkpoint_path(root, int(m.group(1))) if m else None
        if final is not None and not final.exists() and (child / TRAINING_STATE_NAME).is_file():
            os.replace(child, final)
            fsync_dir(root)
    for child in root.iterdir():
        if child.name.startswith(CHECKPOINT_PREFIX) and child.name.endswith((TMP_SUFFIX, OLD_SUFFIX, DELETE_SUFFIX)):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def _delete_checkpoint(path: Path) -> None:
    """Rename out of sight first (atomic), then delete: a kill mid-delete leaves only a ``.tmp.del`` folder."""
    doomed = path.with_name(path.name + DELETE_SUFFIX)
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Keep the ``total_limit`` newest complete checkpoints, delete the others; returns the deleted paths."""
    if total_limit is None:
        return []
    if total_limit < 1:
        raise ValueError(f"checkpoints_total_limit must be >= 1, got {total_limit}.")
    old = [path for _, path in list_checkpoints(output_dir)][:-total_limit]
    for path in old:
        _delete_checkpoint(path)
    return old


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (data and directory entries reach the disk)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def commit_directory(tmp: Path, final: Path) -> None:
    """fsync ``tmp`` and atomically give it the name ``final`` (replacing an existing ``final``).

    Re-saving: ``final`` is first renamed to ``final.tmp.old`` (still listed as the step by `list_checkpoints`),
    then ``tmp`` becomes ``final``, then the old copy is deleted."""
    _fsync_tree(tmp)
    old = final.with_name(final.name + OLD_SUFFIX)
    if final.exists():  # re-saving a step (e.g. after resuming from an earlier checkpoint)
        if old.exists():  # a stale copy; `final` is complete, so it is not the step's only one
            shutil.rmtree(old)
        os.replace(final, old)
        fsync_dir(final.parent)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    is_main_process: bool = True,
    wait_for_everyone: Callable[[], None] = lambda: None,
) -> Iterator[Path]:
    """Context manager for one checkpoint: yields ``checkpoint-N.tmp`` for every process to write into, then the
    main process commits it as ``checkpoint-N``. An exception (or a kill) inside leaves no ``checkpoint-N``.

    The main process must write ``training_state.json`` inside the block (last): it marks the content complete.
    """
    final = checkpoint_path(output_dir, step)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    wait_for_everyone()
    yield tmp
    wait_for_everyone()
    if is_main_process:
        if not (tmp / TRAINING_STATE_NAME).is_file():
            raise RuntimeError(f"{tmp} has no {TRAINING_STATE_NAME}; not committing an incomplete checkpoint.")
        commit_directory(tmp, final)
    wait_for_everyone()
