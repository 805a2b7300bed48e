from .model_card import write_card_sample, write_model_card
from .pipeline_hpdm import HierarchicalPatchPipeline
from .pipeline_output import HPDMPipelineOutput
from .tiling import TiledCanvas

__all__ = ["HierarchicalPatchPipeline", "HPDMPipelineOutput", "TiledCanvas", "write_card_sample", "write_model_card"]
