"""Let accelerate's FSDP2 plugin run on CPU processes (gloo). For CPU runs and tests only.

Why a shim is needed (accelerate 1.15):

* ``accelerate launch`` with ``distributed_type: FSDP`` starts the processes with ``torchrun`` and exports
  ``ACCELERATE_USE_FSDP=true`` plus the ``FSDP_*`` settings, whatever the device. A script on a machine without
  GPUs must pass ``Accelerator(cpu=True)``, which makes ``PartialState`` pick ``DistributedType.MULTI_CPU`` with the
  ``gloo`` backend.
* ``AcceleratorState.__init__`` then promotes a run to ``DistributedType.FSDP`` only when the distributed type is
  one of the accelerator types (``MULTI_GPU``, ``MULTI_XPU``, ...); ``MULTI_CPU`` is not in that list. The plugin
  built from the environment is dropped and the model is silently wrapped in DDP instead of being sharded.

PyTorch's FSDP2 (``fully_shard``) itself works on CPU tensors with gloo, and accelerate's FSDP2 code paths
(``fsdp2_prepare_model``, sharded ``save_state``/``load_state`` through ``torch.distributed.checkpoint``) are
device-agnostic. So the shim does exactly what ``AcceleratorState`` does for GPUs, nothing more: after the original
``__init__``, if the state is ``MULTI_CPU`` and an FSDP plugin was given (or ``ACCELERATE_USE_FSDP`` is set), it sets
``distributed_type = FSDP`` on the shared state (``AcceleratorState`` and ``PartialState``, as accelerate does), stores
the plugin and hands it the mixed-precision setting.

Settings the CPU config must carry: ``fsdp_version: 2``, ``fsdp_sync_module_states: false`` and
``fsdp_cpu_ram_efficient_loading: false`` (both look up a GPU device), see ``examples/configs/fsdp_cpu.yaml``.
"""

from __future__ import annotations

import functools
import os

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_PATCHED_ATTR = "_hpdm_cpu_fsdp_patched"


def fsdp_requested(fsdp_plugin=None) -> bool:
    """Whether accelerate was asked for FSDP (a plugin, or ``ACCELERATE_USE_FSDP`` from ``accelerate launch``)."""
    return fsdp_plugin is not None or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_cpu_fsdp() -> None:
    """Patch ``AcceleratorState.__init__`` (idempotent) so that FSDP is honoured on ``MULTI_CPU``.

    Call it before creating the ``Accelerator``. It changes nothing for GPU runs or for CPU runs without FSDP.
    """
    if getattr(AcceleratorState.__init__, _PATCHED_ATTR, False):
        return
    original_init = AcceleratorState.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_requested(fsdp_plugin):
            if fsdp_plugin is None:
                raise ValueError("FSDP on CPU needs the FullyShardedDataParallelPlugin that Accelerator builds.")
            if fsdp_plugin.fsdp_version != 2:
                raise ValueError("FSDP on CPU is supported with FSDP2 only: set `fsdp_version: 2` in the config.")
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    setattr(__init__, _PATCHED_ATTR, True)
    AcceleratorState.__init__ = __init__
