"""diffusers_hpdm: Hierarchical Patch Diffusion Models (HPDM, CVPR 2024) for Hugging Face Diffusers."""

__version__ = "0.1.0"
