"""Checks that a checkpoint folder can restore *every* piece of training state before a run resumes from it.

Accelerate's ``load_state`` logs "Could not load random states" at INFO and carries on when a random-state file is
unreadable, and a malformed ``training_state.json`` used to surface as ``KeyError: 'seed'``. A resume that cannot
restore the weights, the optimizer, the learning-rate schedule, the EMA, every process's random streams and the
data order is not exact, so `check_checkpoint` raises a ``ValueError`` naming the missing or broken pieces instead.

A checkpoint folder (``checkpoint-N``, see docs/training.md) holds:

- ``model.safetensors`` (or ``model_<i>.safetensors`` / an FSDP ``pytorch_model_fsdp_0/`` folder): the weights;
- ``optimizer.bin`` (or ``optimizer_0/``): LAMB's moments and step counts;
- ``scheduler.bin``: the learning-rate schedule;
- ``ema.safetensors``: the EMA weights and their update count;
- ``random_states_<rank>.pkl``: Python / NumPy / torch random streams of each process;
- ``training_state.json`` (written last: marks the folder complete): ``global_step``, ``num_skipped``, ``seed``
  and ``data_order`` (``epoch``, ``start_batch``, ``seed``);
- ``tokenizer/`` and ``text_encoder/`` when the run built its text encoder offline.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from .checkpoint import TRAINING_STATE_NAME

STATE_KEYS = {"global_step": int, "num_skipped": int, "seed": int, "data_order": dict}
DATA_ORDER_KEYS = ("epoch", "start_batch", "seed")
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def read_training_state(checkpoint: str | os.PathLike) -> dict:
    """The checkpoint's ``training_state.json``, validated; a ``ValueError`` naming the file and what is wrong."""
    path = Path(checkpoint) / TRAINING_STATE_NAME
    where = f"{path}"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{where} does not exist: {checkpoint} is not a complete checkpoint.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where} is not valid JSON ({error}); resume from another checkpoint.") from None
    if not isinstance(state, dict):
        raise ValueError(f"{where} must hold a JSON object, got {type(state).__name__}.")
    problems = []
    for key, kind in STATE_KEYS.items():
        if key not in state:
            problems.append(f"`{key}` is missing")
        elif not isinstance(state[key], kind) or isinstance(state[key], bool):
            problems.append(f"`{key}` must be {kind.__name__}, got {state[key]!r}")
        elif kind is int and state[key] < 0:
            problems.append(f"`{key}` must be >= 0, got {state[key]}")
    order = state.get("data_order")
    if isinstance(order, dict):
        for key in DATA_ORDER_KEYS:
            value = order.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"`data_order.{key}` must be an integer >= 0, got {value!r}")
    if problems:
        raise ValueError(f"{where} is malformed: {'; '.join(problems)}. Resume from another checkpoint.")
    return state


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (header and data length), or ``None``."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return f"{path.name} is truncated (header of {length} bytes in a {size}-byte file)"
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as error:
        return f"{path.name} is unreadable ({type(error).__name__}: {error})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end != size:
        return f"{path.name} is truncated or padded ({size} bytes, its header says {8 + length + end})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """Why a ``torch.save`` file (a zip archive) is broken, or ``None``; reads it once (CRC check)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as error:
        return f"{path.name} is unreadable ({type(error).__name__}: {error})"
    return None if bad is None else f"{path.name} is corrupted (bad CRC in {bad})"


def _rng_problem(path: Path) -> str | None:
    import torch

    if not path.is_file():
        return f"{path.name} is missing"
    try:
        states = torch.load(path, weights_only=False)  # accelerate's own format (a pickle it wrote)
    except Exception as error:  # any unpickling failure
        return f"{path.name} cannot be loaded ({type(error).__name__}: {error})"
    missing = [k for k in RNG_KEYS if not isinstance(states, dict) or k not in states]
    return f"{path.name} lacks {missing}" if missing else None


def _first(folder: Path, names: list[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).exists()), None)


def check_checkpoint(checkpoint: str | os.PathLike, num_processes: int = 1, ema: bool = True) -> dict:
    """Check that ``checkpoint`` can restore every piece of state for ``num_processes`` processes; returns the
    validated ``training_state.json``.

    Raises:
        `ValueError`: listing each piece that cannot be restored (``weights``, ``optimizer``, ``lr schedule``,
            ``EMA``, ``RNG``, ``data order``) and why.
    """
    folder = Path(checkpoint)
    problems: dict[str, str] = {}
    try:
        state = read_training_state(folder)
    except (ValueError, FileNotFoundError) as error:
        problems["data order"] = str(error)
        state = {}

    weights = _first(folder, ["model.safetensors", "model_0.safetensors", "pytorch_model.bin", "pytorch_model_0.bin"])
    if weights is None and not (folder / "pytorch_model_fsdp_0").is_dir():
        problems["weights"] = "no model.safetensors (or pytorch_model_fsdp_0/)"
    elif weights is not None:
        check = safetensors_problem if weights.suffix == ".safetensors" else _torch_file_problem
        if problem := check(weights):
            problems["weights"] = problem
    optimizer = _first(folder, ["optimizer.bin", "optimizer_0.bin"])
    if optimizer is None and not (folder / "optimizer_0").is_dir():
        problems["optimizer"] = "no optimizer.bin (or optimizer_0/)"
    elif optimizer is not None and (problem := _torch_file_problem(optimizer)):
        problems["optimizer"] = problem
    schedule = folder / "scheduler.bin"
    if not schedule.is_file():
        problems["lr schedule"] = "no scheduler.bin"
    elif problem := _torch_file_problem(schedule):
        problems["lr schedule"] = problem
    if ema:
        path = folder / "ema.safetensors"
        problem = "no ema.safetensors" if not path.is_file() else safetensors_problem(path)
        if problem:
            problems["EMA"] = problem
    rng = [p for p in (_rng_problem(folder / f"random_states_{i}.pkl") for i in range(num_processes)) if p]
    if rng:
        problems["RNG"] = "; ".join(rng)
    if problems:
        listed = "; ".join(f"{piece}: {why}" for piece, why in problems.items())
        raise ValueError(
            f"Cannot resume exactly from {folder}: {listed}. Resume from another checkpoint "
            "(--resume_from_checkpoint checkpoint-M) or start a new run without --resume_from_checkpoint."
        )
    return state
