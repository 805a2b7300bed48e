"""Hub model cards for saved HPDM pipelines (``README.md`` with YAML metadata, via ``huggingface_hub.ModelCard``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
from huggingface_hub import ModelCard, ModelCardData

from ..visualize import contact_sheet, save_video, to_uint8
from .hub_loading import LOADER_MODULE

# Not on PyPI: the package and its pinned dependencies install from a checkout of its repository.
INSTALL = (
    "# in the root of a diffusers_hpdm checkout (not on PyPI); requirements.lock pins every dependency\n"
    "pip install -c requirements.lock ."
)

TEMPLATE = """---
{card_data}
---

# {title}

A [Hierarchical Patch Diffusion Model](https://arxiv.org/abs/2406.07792) (HPDM, CVPR 2024) for text/class-to-video
generation in pixel space, packaged for 🧨 Diffusers with the `diffusers_hpdm` package.

{description}

{sample_section}## What the model knows

{knows}

## Pyramid

| level | canvas (frames x height x width) | tiles (50% overlap on all axes) | blocks run |
|---|---|---|---|
{pyramid_rows}

Patch size `{patch_size}`, tokenizer `{tokenizer_patch}`, token/latent width {token_dim}/{latent_dim},
{num_latents} latents, {num_blocks} RIN blocks, levels per block `{levels_per_block}`, context fusion `{context_fusion}`.

## Install

The weights need the model code of the `diffusers_hpdm` package ({version}; diffusers, transformers and torch come
with it):

```bash
{install}
```

## Usage

```python
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import export_to_video

pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)
video = pipe({call_args}, generator=torch.Generator().manual_seed(0)).frames[0]
export_to_video(list(video), "video.mp4", fps=8)
```

`trust_remote_code=True` runs this folder's `{loader}.py`, which only imports `HierarchicalPatchPipeline` from the
installed `diffusers_hpdm` (diffusers resolves a pipeline class outside its own namespace only through such a file).
Without remote code, the same pipeline and the same frames:

```python
from diffusers_hpdm import HierarchicalPatchPipeline

pipe = HierarchicalPatchPipeline.from_pretrained("{repo_id}")
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
    install: str = INSTALL,
    sample: str | list[str] | None = None,
    sample_caption: str = "",
) -> Path:
    """Write ``save_dir/README.md`` for a pipeline saved with ``save_pretrained`` and return its path.

    Args:
        domain: what the training data showed (the "What the model knows" section); a word-level tokenizer's
            vocabulary is listed there too (words outside it reach the model as one unknown token).
        install: the shell line(s) that install ``diffusers_hpdm`` in a fresh environment (default: from a checkout
            of its repository with the pinned ``requirements.lock``; give a ``pip install git+...`` line for yours).
        sample: file(s) inside ``save_dir`` (a gif and/or contact sheet of the model's output, e.g. from
            ``write_card_sample``) embedded at the top of the card; ``sample_caption`` says how they were made.
    """
    from .. import __version__
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
    sample_section = ""
    if sample is not None:
        files = [sample] if isinstance(sample, str) else list(sample)
        missing = [f for f in files if not (save_dir / f).is_file()]
        if missing:
            raise ValueError(
                f"`sample` must name files inside {save_dir} (see write_card_sample); missing: {missing}."
            )
        images = " ".join(f"![{Path(f).stem}]({f})" for f in files)
        sample_section = f"## Sample\n\n{images}\n\n{sample_caption}\n\n"
    card = ModelCard(
        TEMPLATE.format(
            card_data=data.to_yaml(),
            title=title,
            description=description,
            pyramid_rows="\n".join(rows),
            repo_id=repo_id or str(save_dir),
            call_args=call_args,
            sample_section=sample_section,
            install=install,
            version=__version__,
            loader=LOADER_MODULE,
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


def write_card_sample(
    levels: list[np.ndarray], save_dir: str | Path, name: str = "sample", fps: int = 8, size: int = 128
) -> tuple[str, str]:
    """Write a model card's sample: ``{name}.gif`` (the finest level, nearest-upscaled so that its longer side is
    ``size`` pixels) and ``{name}_levels.png`` (every level, one row each, coarse to fine, 8 frames each;
    ``contact_sheet``).

    Args:
        levels: per level, one video ``(F_l, H_l, W_l, 3)`` in ``[0, 1]`` (``pipe(..., output_type="np",
            return_levels=True).levels``, video 0); a single level is the video alone.
    Returns:
        the two file names, relative to ``save_dir`` (pass the gif as ``write_model_card(sample=...)``).
    """
    save_dir = Path(save_dir)
    video = levels[-1]
    scale = max(1, size // max(video.shape[1:3]))
    frames = [
        PIL.Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), PIL.Image.NEAREST)
        for f in to_uint8(video)
    ]
    big = np.stack([np.asarray(f, dtype=np.float32) / 255 for f in frames])  # (F, H * scale, W * scale, 3)
    save_video(big, save_dir / f"{name}.gif", fps=fps)
    # At the finest level's size, 128 colours (noisy frames compress poorly: the card's files stay small)
    contact_sheet(levels).quantize(colors=128).save(save_dir / f"{name}_levels.png", optimize=True)
    return f"{name}.gif", f"{name}_levels.png"
