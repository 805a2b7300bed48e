"""Schedulers: the EDM parametrization with per-level noise shift, step counts and samplers (DESIGN §3)."""

from .scheduling_hpdm import HPDMScheduler, HPDMSchedulerOutput

__all__ = ["HPDMScheduler", "HPDMSchedulerOutput"]
