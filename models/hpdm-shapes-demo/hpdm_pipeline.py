"""Loads `diffusers_hpdm.HierarchicalPatchPipeline` for `DiffusionPipeline.from_pretrained(...,
trust_remote_code=True)`. Written by `HierarchicalPatchPipeline.save_pretrained`; it holds no model code."""

try:
    from diffusers_hpdm import HierarchicalPatchPipeline
except ImportError as error:  # the weights need the package's model code
    raise ImportError(
        "This pipeline needs the `diffusers_hpdm` package (0.1.0): pip install -c requirements.lock . in the root of a diffusers_hpdm checkout (it is not on PyPI)"
    ) from error

__all__ = ["HierarchicalPatchPipeline"]
