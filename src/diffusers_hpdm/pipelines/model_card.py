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

## What the model knows

{knows}

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

Loading a local folder verifies `checksums.json` (the sha256 of every weight file, written by `save_pretrained`):
corrupted weights raise an error naming the file instead of generating noise.

## Training

{training}

## Metrics

{metrics}
"""


def word_vocabulary(save_dir: str | Path) -> list[str] | None:
    """The words of a saved word-level tokenizer (``tokenizer/tokenizer.json`` with a ``WordLevel`` model), without
    its special tokens; ``None`` for subword tokenizers (T5, BPE) or when there is none."""
    path = Path(save_dir) / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        return None
    model = json.loads(path.read_text()).get("model", {})
    if model.get("type") != "WordLevel":
        return None
    special = {t["content"] for t in json.loads(path.read_text()).get("added_tokens", [])} | {model.get("unk_token")}
    return sorted(w for w in model.get("vocab", {}) if w not in special and not w.startswith("<"))


def knows_section(save_dir: str | Path, domain: str = "", example_prompt: str | None = None) -> str:
    """The model card's "What the model knows" text: ``domain``, the word-level vocabulary, an example prompt."""
    parts = [domain.strip()] if domain.strip() else []
    words = word_vocabulary(save_dir)
    if words is not None:
        parts.append(
            f"Its tokenizer knows {len(words)} words: {', '.join(f'`{w}`' for w in words)}. Any other word becomes "
            "the same unknown token (the pipeline warns, naming such words), so the model cannot follow it."
        )
    if example_prompt:
        parts.append(f"Example prompt: `{example_prompt}`.")
    return "\n\n".join(parts) or "Not recorded."


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
    domain: str = "",
) -> Path:
    """Write ``save_dir/README.md`` for a pipeline saved with ``save_pretrained`` and return its path.

    ``domain``: what the training data showed (the "What the model knows" section); a word-level tokenizer's
    vocabulary is listed there too (words outside it reach the model as one unknown token)."""
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
            knows=knows_section(save_dir, domain, example_prompt if is_text else None),
            **{k: cfg.get(k) for k in ("patch_size", "tokenizer_patch", "token_dim", "latent_dim", "num_latents")},
            num_blocks=cfg["num_blocks"],
            levels_per_block=lpb,
            context_fusion=cfg.get("context_fusion", "deep"),
        )
    )
    path = save_dir / "README.md"
    card.save(path)
    return path
