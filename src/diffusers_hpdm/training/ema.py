"""Exponential moving average of *every* parameter, correct under FSDP2 (DESIGN §5).

Why not ``diffusers.training_utils.EMAModel``: under FSDP2 the parameters are ``DTensor`` shards. ``EMAModel`` built
after ``accelerator.prepare`` does average the local shards, but its ``state_dict`` is a list of those shards that
accelerate pickles **from the main process only**, so on resume every process loads process 0's shards into its own
slots — a silently wrong EMA, the failure the paper reports for its FSDP run (jitter from EMA parameters that were
never updated). Built before ``prepare`` it holds full tensors that no longer match the sharded parameters.

`EMA` keeps one shadow per parameter with the parameter's own placement (a ``DTensor`` shard under FSDP2, a plain
tensor otherwise) and updates the local shards in place: an elementwise update of shards is bitwise the update of
the full tensor, so the sharded EMA equals the single-process one. `state_dict` gathers full tensors (a collective:
call it on every process) keyed by parameter name, and `load_state_dict` takes full tensors and keeps this process's
shard, so checkpoints do not depend on the number of processes. Every parameter is tracked, by name, and a
mismatch between the model and the EMA is an error, never a skip.

The decay follows EDM (Karras et al. 2022): a half-life in optimizer steps, ``beta = 0.5 ** (1 / half_life)``, with
an optional ramp-up ``half_life_t = min(half_life, rampup_ratio * t)`` so that short runs average over their own
recent past instead of their initialization.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch without DTensor
    DTensor, distribute_tensor = (), None

EMA_WEIGHTS_NAME = "ema.safetensors"


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a ``DTensor`` (shares storage: in-place ops update the ``DTensor``); else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathers ``DTensor`` shards: a collective), detached, on the CPU."""
    t = t.full_tensor() if isinstance(t, DTensor) else t
    return t.detach().cpu().contiguous()


class EMA:
    r"""EMA of all parameters of ``model`` (after ``accelerator.prepare``: it follows their placement).

    Args:
        model: the module (unwrapped: parameter names are the ones ``save_pretrained`` uses).
        half_life: half-life in optimizer steps (ignored when ``decay`` is given).
        rampup_ratio: EDM ramp-up: the half-life is at most ``rampup_ratio * step``; ``None`` disables it.
        decay: a constant decay instead of the half-life schedule.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        half_life: float = 1000.0,
        rampup_ratio: float | None = 0.05,
        decay: float | None = None,
    ):
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must be in [0, 1), got {decay}.")
        if half_life <= 0 or (rampup_ratio is not None and rampup_ratio <= 0):
            raise ValueError(f"`half_life` and `rampup_ratio` must be positive, got {half_life}, {rampup_ratio}.")
        self.half_life, self.rampup_ratio, self.decay = float(half_life), rampup_ratio, decay
        self.step = 0
        self.names = [name for name, _ in model.named_parameters()]
        with torch.no_grad():
            self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    def beta(self, step: int) -> float:
        """Weight of the old average after optimizer step ``step`` (1-based)."""
        if self.decay is not None:
            return self.decay
        half_life = self.half_life
        if self.rampup_ratio is not None:
            half_life = min(half_life, step * self.rampup_ratio)
        return 0.5 ** (1.0 / max(half_life, 1e-8))

    def _check(self, names: list[str]) -> None:
        if names != self.names:
            missing, extra = sorted(set(self.names) - set(names)), sorted(set(names) - set(self.names))
            raise ValueError(f"EMA and model parameters differ: missing in model {missing}, not in EMA {extra}.")

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One EMA step after an optimizer step: ``shadow <- beta * shadow + (1 - beta) * param``, for every
        parameter (frozen ones too: their average is themselves)."""
        named = list(model.named_parameters())
        self._check([n for n, _ in named])
        self.step += 1
        weight = 1.0 - self.beta(self.step)
        shadows = [_local(self.shadow[n]) for n, _ in named]
        params = [_local(p.detach()).to(s.dtype) for (_, p), s in zip(named, shadows)]
        torch._foreach_lerp_(shadows, params, weight)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averages into ``model``'s parameters (same placement as at construction)."""
        named = list(model.named_parameters())
        self._check([n for n, _ in named])
        for name, p in named:
            _local(p).copy_(_local(self.shadow[name]))

    # ------------------------------------------------------------------------------------------------ state
    def config(self) -> dict:
        return {"step": self.step, "half_life": self.half_life, "rampup_ratio": self.rampup_ratio, "decay": self.decay}

    def state_dict(self) -> dict:
        """``{"shadow": {name: full CPU tensor}, **config}``. Gathers shards: call on every process."""
        return {**self.config(), "shadow": {n: _full(self.shadow[n]) for n in self.names}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Load full tensors (from `state_dict` or `load`); each process keeps the shard its parameter holds."""
        shadow = state["shadow"]
        if set(shadow) != set(self.names):
            missing, extra = sorted(set(self.names) - set(shadow)), sorted(set(shadow) - set(self.names))
            raise ValueError(f"EMA state does not match the model: missing {missing}, unexpected {extra}.")
        for name in self.names:
            full, current = shadow[name], self.shadow[name]
            if tuple(full.shape) != tuple(current.shape):
                raise ValueError(f"EMA tensor {name} has shape {tuple(full.shape)}, expected {tuple(current.shape)}.")
            full = full.to(dtype=current.dtype)
            if isinstance(current, DTensor):
                full = distribute_tensor(
                    full.to(current.device), current.device_mesh, current.placements, src_data_rank=None
                )
            _local(current).copy_(_local(full))
        self.step = int(state["step"])
        self.half_life = float(state.get("half_life", self.half_life))
        self.rampup_ratio = state.get("rampup_ratio", self.rampup_ratio)
        self.decay = state.get("decay", self.decay)

    def save(self, directory: str | os.PathLike, is_main_process: bool = True) -> None:
        """Write ``ema.safetensors`` (full tensors, config in the metadata) to ``directory``. Every process must call
        it (shards are gathered); only ``is_main_process`` writes."""
        state = self.state_dict()
        if is_main_process:
            metadata = {"ema_config": json.dumps({k: v for k, v in state.items() if k != "shadow"})}
            save_file(state["shadow"], os.path.join(directory, EMA_WEIGHTS_NAME), metadata=metadata)

    def load(self, directory: str | os.PathLike) -> None:
        """Read ``ema.safetensors`` written by `save` (every process reads it and keeps its shard)."""
        from safetensors import safe_open

        path = os.path.join(directory, EMA_WEIGHTS_NAME)
        with safe_open(path, framework="pt") as f:
            config = json.loads(f.metadata()["ema_config"])
        self.load_state_dict({**config, "shadow": load_file(path)})
