"""Hub model cards for saved HPDM pipelines (``README.md`` with YAML metadata, via ``huggingface_hub.ModelCard``)."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

TEMPLATE = """---
{card_data}
---

# {title}

A [Hierarchical Patch Diffusion Model](https://arxiv.org/abs/2406.07792) (HPDM, CVPR 2024) for text/class-to-video
generation in pixel space, packaged for 🧨 Diffusers with the `diffusers_hpdm` package.

{description}

## Pyramid

| level | canvas (frames x height x width) | tiles (50% overlap on all axes) | blocks run |
|---|---|---|---|
{pyramid_rows}

Patch size `{patch_size}`, tokenizer `{tokenizer_patch}`, token/latent width {token_dim}/{latent_dim},
{num_latents} latents, {num_blocks} RIN blocks, levels per block `{levels_per_block}`, context fusion `{context_fusion}`.

## Usage

```python
import torch
from diffusers.utils import export_to_video
from diffusers_hpdm import HierarchicalPatchPipeline

pipe = HierarchicalPatchPipeline.from_pretrained("{repo_id}")
video = pipe({call_args}, generator=torch.Generator().manual_seed(0)).frames[0]
export_to_video(list(video), "video.mp4", fps=8)
```

## Training

{training}

## Metrics

{metrics}
"""


def write_model_card(
    save_dir: str | Path,
    repo_id: str | None = None,
    title: str = "HPDM video model",
    description: str = "",
    example_prompt: str = "a robot planting a tree",
    training: str = "Not recorded.",
    metrics: dict | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
) -> Path:
    """Write ``save_dir/README.md`` for a pipeline saved with ``save_pretrained`` and return its path."""
    from ..geometry import tile_plan

    save_dir = Path(save_dir)
    cfg = json.loads((save_dir / "transformer" / "config.json").read_text())
    from ..geometry import level_sizes

    sizes = level_sizes(cfg["patch_size"], cfg["num_levels"], cfg["level_growth"])
    lpb = cfg.get("levels_per_block") or [cfg["num_levels"]] * cfg["num_blocks"]
    rows = []
    for lvl, size in enumerate(sizes):
        n = len(tile_plan(size, cfg["patch_size"]))
        blocks = [b for b, k in enumerate(lpb) if k > lvl]
        rows.append(f"| {lvl} | {'x'.join(map(str, size))} | {n} | {blocks} |")
    is_text = bool(cfg.get("text_embed_dim"))
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-video" if is_text else None,
        license="apache-2.0",
        tags=["diffusers", "diffusers_hpdm", "hpdm", "video-generation", "patch-diffusion", "pixel-space"]
        + ([] if is_text else ["class-conditional"]),
        base_model=base_model,
        datasets=datasets,
    )
    data.hpdm = {
        "patch_size": list(cfg["patch_size"]),
        "num_levels": cfg["num_levels"],
        "level_growth": list(cfg["level_growth"]),
        "level_sizes": [list(s) for s in sizes],
        "levels_per_block": lpb,
    }
    metric_text = "\n".join(f"- **{k}**: {v}" for k, v in (metrics or {}).items()) or "Not evaluated."
    call_args = repr(example_prompt) if is_text else "class_labels=[0]"
    card = ModelCard(
        TEMPLATE.format(
            card_data=data.to_yaml(),
            title=title,
            description=description,
            pyramid_rows="\n".join(rows),
            repo_id=repo_id or str(save_dir),
            call_args=call_args,
            training=training,
            metrics=metric_text,
            **{k: cfg.get(k) for k in ("patch_size", "tokenizer_patch", "token_dim", "latent_dim", "num_latents")},
            num_blocks=cfg["num_blocks"],
            levels_per_block=lpb,
            context_fusion=cfg.get("context_fusion", "deep"),
        )
    )
    path = save_dir / "README.md"
    card.save(path)
    return path
