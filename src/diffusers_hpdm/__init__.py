"""diffusers_hpdm: Hierarchical Patch Diffusion Models (HPDM, CVPR 2024) for Hugging Face Diffusers."""

from .models import PRESETS, HPDMTransformer, HPDMTransformerOutput, LevelContext
from .pipelines import HierarchicalPatchPipeline, HPDMPipelineOutput, write_card_sample, write_model_card
from .schedulers import HPDMScheduler, HPDMSchedulerOutput

__version__ = "0.1.0"

__all__ = [
    "HPDMTransformer",
    "HPDMTransformerOutput",
    "HPDMScheduler",
    "HPDMSchedulerOutput",
    "HierarchicalPatchPipeline",
    "HPDMPipelineOutput",
    "LevelContext",
    "PRESETS",
    "write_card_sample",
    "write_model_card",
]
