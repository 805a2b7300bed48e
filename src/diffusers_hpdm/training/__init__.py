"""Training utilities for HPDM (DESIGN §5): the loss, EMA, a DTensor-aware LAMB, crash-safe checkpoints, a resumable
data order, counter-based randomness and the CPU FSDP shim used by ``examples/train_t2v.py``."""

from .checkpoint import (
    TRAINING_STATE_NAME,
    atomic_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    remove_incomplete,
    resolve_checkpoint,
)
from .conditioning import PromptEncoder
from .ema import EMA
from .fsdp_cpu import enable_cpu_fsdp
from .lamb import Lamb
from .loss import HPDMLossOutput, hpdm_loss
from .norms import clip_grad_norm_
from .params import freeze_parameters, lamb_param_groups, unused_parameters
from .resume import check_checkpoint, read_training_state
from .rng import sample_generators, stream_seed
from .sampler import ShardedBatchSampler
from .skips import NoUsableDataError, SkipMonitor
from .trackers import log_videos

__all__ = [
    "EMA",
    "HPDMLossOutput",
    "Lamb",
    "NoUsableDataError",
    "SkipMonitor",
    "check_checkpoint",
    "read_training_state",
    "PromptEncoder",
    "ShardedBatchSampler",
    "TRAINING_STATE_NAME",
    "atomic_checkpoint",
    "clip_grad_norm_",
    "enable_cpu_fsdp",
    "freeze_parameters",
    "lamb_param_groups",
    "hpdm_loss",
    "latest_checkpoint",
    "list_checkpoints",
    "log_videos",
    "prune_checkpoints",
    "remove_incomplete",
    "resolve_checkpoint",
    "sample_generators",
    "stream_seed",
    "unused_parameters",
]
