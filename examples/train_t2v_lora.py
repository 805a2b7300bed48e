"""LoRA mode of ``train_t2v.py`` (``--rank``): adapters on the frozen transformer of ``--pretrained_base`` through
diffusers' ``PeftAdapterMixin``, the pipeline that samples with them, and the adapter's model card.

The output folder holds the adapter, not a pipeline; load it on top of its base::

    pipe = HierarchicalPatchPipeline.from_pretrained(base)
    pipe.transformer.load_lora_adapter(output_dir, prefix=None, weight_name="pytorch_lora_weights.safetensors")
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from accelerate.logging import get_logger
from train_t2v_components import log_validation, push_to_hub, summarize

from diffusers_hpdm import HierarchicalPatchPipeline, HPDMTransformer

logger = get_logger(__name__, log_level="INFO")

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what `save_lora_adapter` writes


def add_lora(transformer: HPDMTransformer, args) -> list[str]:
    """Freeze ``transformer`` and add a rank-``args.rank`` adapter on ``args.lora_target_modules``; returns the
    names of the trainable (adapter) parameters."""
    from peft import LoraConfig

    targets = [t.strip() for t in args.lora_target_modules.split(",") if t.strip()]
    transformer.requires_grad_(False)
    config = LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, init_lora_weights="gaussian", target_modules=targets)
    try:
        transformer.add_adapter(config)
    except ValueError as error:  # peft: no module matched
        raise ValueError(f"--lora_target_modules {args.lora_target_modules!r}: {error}") from error
    return [n for n, p in transformer.named_parameters() if p.requires_grad]


def load_lora(pipe: HierarchicalPatchPipeline, folder: str | Path) -> HierarchicalPatchPipeline:
    """Load the adapter saved in ``folder`` into ``pipe.transformer``."""
    pipe.transformer.load_lora_adapter(str(folder), prefix=None, weight_name=LORA_WEIGHT_NAME)
    return pipe


def lora_pipeline(model: HPDMTransformer, args) -> HierarchicalPatchPipeline:
    """The base pipeline with ``model``'s current adapter, loaded the way a user loads the saved one."""
    pipe = HierarchicalPatchPipeline.from_pretrained(args.pretrained_base)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_lora_adapter(tmp)
        load_lora(pipe, tmp)
    return pipe


def write_lora_card(args, summary: str, videos: list[str]) -> Path:
    """``output_dir/README.md`` for the adapter: its base, how to load it, how it was trained."""
    base = args.pretrained_base
    targets = ", ".join(f"`{t}`" for t in args.lora_target_modules.split(","))
    samples = "".join(f"- `{Path(v).relative_to(args.output_dir)}`\n" for v in videos)
    text = f"""---
library_name: diffusers
tags: [diffusers, diffusers_hpdm, hpdm, lora, video-generation]
license: apache-2.0
{"base_model: " + base if not Path(base).exists() else ""}
---

# HPDM LoRA {Path(args.output_dir).name}

A rank-{args.rank} LoRA adapter (alpha {args.lora_alpha}) on {targets} of the transformer of `{base}`.

```python
from diffusers_hpdm import HierarchicalPatchPipeline

pipe = HierarchicalPatchPipeline.from_pretrained("{base}")
pipe.transformer.load_lora_adapter("{args.output_dir}", prefix=None, weight_name="{LORA_WEIGHT_NAME}")
video = pipe("{(args.validation_prompts or ["a red circle moving right"])[0]}").frames[0]
```

`attention_kwargs={{"scale": s}}` on the transformer scales the adapter by `s` for one call.

## Training

`examples/train_t2v.py --rank {args.rank}`: {args.max_train_steps} steps, AdamW lr {args.learning_rate}, weight decay
{args.weight_decay}, batch {args.train_batch_size} per process, data `{args.dataset_name or args.train_data_dir}`.

{summary}.

{"Validation samples:" + chr(10) + samples if samples else ""}"""
    path = Path(args.output_dir) / "README.md"
    path.write_text(text)
    return path


def save_adapter(args, accelerator, model, history, total_skipped: int, step: int, seed: int) -> None:
    """LoRA mode: ``pytorch_lora_weights.safetensors`` in ``--output_dir``, validation videos sampled by the base
    pipeline with the adapter loaded from that file, the adapter's model card, the Hub upload."""
    model.save_lora_adapter(args.output_dir)
    videos = []
    if args.validation_prompts or args.class_conditional:
        pipe = load_lora(HierarchicalPatchPipeline.from_pretrained(args.pretrained_base), args.output_dir)
        videos = log_validation(pipe, args, accelerator, step, seed)
    summary = summarize(history, total_skipped)
    write_lora_card(args, summary, videos)
    logger.info(f"{summary}; saved the LoRA adapter to {Path(args.output_dir) / LORA_WEIGHT_NAME}")
    if args.push_to_hub:
        push_to_hub(args)
