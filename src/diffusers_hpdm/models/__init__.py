from .context import DeepContextFusion, LevelContext
from .presets import PRESETS
from .rin import RINBlock
from .transformer_hpdm import HPDMTransformer, HPDMTransformerOutput

__all__ = ["HPDMTransformer", "HPDMTransformerOutput", "RINBlock", "LevelContext", "DeepContextFusion", "PRESETS"]
