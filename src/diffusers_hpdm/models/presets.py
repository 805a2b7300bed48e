"""Named configurations. Paper sizes from appendix table 8; tiny ones run on a laptop CPU."""

# This implementation's recommended settings, on in every preset (docs/concepts.md, "differs from the paper"):
# a noise-modulated output head and erf-GELU (~3x faster than tanh-GELU on CPU).
_RECOMMENDED = dict(output_modulation=True, activation_fn="gelu")

_UCF = dict(
    **_RECOMMENDED,
    in_channels=3,
    patch_size=(16, 64, 64),
    num_levels=3,
    level_growth=(2, 2, 2),
    tokenizer_patch=(1, 4, 4),
    token_dim=1024,
    num_latents=768,
    num_blocks=6,
    num_compute_layers=4,
    num_heads=16,
    levels_per_block=[1, 1, 2, 2, 3, 3],
    num_classes=101,
)

PRESETS: dict[str, dict] = {
    # Class-conditional UCF-101, 64x256x256 from 16x64x64 patches.
    "hpdm-s": {**_UCF, "latent_dim": 256, "num_heads": 4},
    "hpdm-m": {**_UCF, "latent_dim": 512, "num_heads": 8},
    "hpdm-l": {**_UCF, "latent_dim": 1024},
    # Text-to-video, 64x288x512 from 8x36x64 patches (T5-XXL embeddings, 4096 wide).
    "hpdm-t2v": {
        **_UCF,
        "patch_size": (8, 36, 64),
        "num_levels": 4,
        "tokenizer_patch": (1, 3, 4),
        "latent_dim": 3072,
        "num_heads": 24,
        "levels_per_block": [1, 2, 2, 3, 3, 4],
        "num_classes": None,
        "text_embed_dim": 4096,
    },
    # CPU-sized: 3 levels, 4x16x16 patches -> 16x64x64 videos.
    "tiny": dict(
        **_RECOMMENDED,
        patch_size=(4, 16, 16),
        num_levels=3,
        tokenizer_patch=(1, 4, 4),
        token_dim=64,
        latent_dim=128,
        num_latents=32,
        num_blocks=6,
        num_compute_layers=2,
        num_heads=4,
        levels_per_block=[1, 1, 2, 2, 3, 3],
        num_classes=10,
    ),
    "tiny-t2v": None,  # filled below: "tiny" with 64-wide text conditioning instead of classes
    # The text-to-video geometry (8x36x64 patches, 1x3x4 tokens, 4 levels) at a width a CPU can run.
    "tiny-t2v-4": dict(
        **_RECOMMENDED,
        patch_size=(8, 36, 64),
        num_levels=4,
        tokenizer_patch=(1, 3, 4),
        token_dim=32,
        latent_dim=64,
        num_latents=32,
        num_blocks=6,
        num_compute_layers=1,
        num_heads=2,
        levels_per_block=[1, 2, 2, 3, 3, 4],
        text_embed_dim=64,
    ),
    # Shaped like the paper's T2V-1K: 16 frames kept, height and width doubling (16x72x128 -> 16x576x1024).
    "tiny-t2v-1k": None,  # filled below: "tiny-t2v-4" at 16x72x128 patches, 16 frames at every level
}

PRESETS["tiny-t2v"] = {**PRESETS["tiny"], "num_classes": None, "text_embed_dim": 64}
PRESETS["tiny-t2v-1k"] = {**PRESETS["tiny-t2v-4"], "patch_size": (16, 72, 128), "level_growth": (1, 2, 2)}
