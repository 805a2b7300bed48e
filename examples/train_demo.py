"""Reproduce the bundled demo model `models/hpdm-shapes-demo` from scratch (`make train-demo`).

The paper's text-to-video recipe at CPU scale (appendix C, table 8): pre-train a 1-level low-resolution base on
downsampled videos, expand it to a 3-level pyramid (`HPDMTransformer.from_base`, level 0 reproduced exactly) and
fine-tune. Then take that pyramid's level 0 (`examples/extract_level0.py`), expand it again with shallow context
fusion and fine-tune all levels jointly for longer (docs/probes.md, probe 11: this third stage is the one measured;
the second stage only gives level 0 its last 1000 steps). Then evaluate on held-out prompts and write the metrics
into the model card.

    python examples/train_demo.py --output_dir models/hpdm-shapes-demo
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The prompt's layout (where the object starts, hence its motion direction) is decided at high noise, and an RIN
# learns that position-by-prompt interaction only after a long plateau (docs/direction.md). The base therefore draws
# half of its samples at sigma ~ 20 and never drops their prompt, mutes the pure-noise pixels there
# (input_gate_sigma) and gives the tokens the prompt's layout code where the pixels carry nothing (text_layout,
# gated by text_layout_sigma); input_modulation lets the tokenizer rescale the pixels per noise level. The two 3x3
# convolutions let tokens see, and the readout write, across the 4x4 token borders that a linear tokenizer and
# readout leave as visible steps (RIN's "dead pixels"; docs/evaluation.md).
MODEL_OVERRIDES = {
    "text_layout": True,
    "text_layout_sigma": 2.0,
    "input_gate_sigma": 0.5,
    "input_modulation": True,
    "input_conv_channels": 16,
    "output_conv_channels": 16,
}
_BASE_TRAINING_ARGS = [
    "--num_levels", "1", "--train_batch_size", "16", "--lr_warmup_steps", "50", "--ema_half_life", "250",
    "--checkpointing_steps", "1000", "--logging_steps", "100", "--p_mean", "-0.4", "--p_std", "1.4",
    "--high_noise_fraction", "0.5", "--keep_condition_above_sigma", "10",
]  # fmt: skip


def base_args(context_fusion: str = "deep") -> list[str]:
    """The base's training arguments with ``context_fusion`` set; the fine-tune keeps the base's fusion mode. (At one
    level the mode only decides whether the tokenizer has context-pixel columns, which level 0's zero context never
    trains; `from_base` can also convert a base of one mode into a pyramid of another, docs/api.md.)"""
    overrides = {**MODEL_OVERRIDES, "context_fusion": context_fusion}
    return [*_BASE_TRAINING_ARGS, "--model_overrides", json.dumps(overrides)]


BASE_ARGS = base_args()  # the bundled model's base
# Level-0 sampling of the bundled model: deterministic Heun (s_churn=0, the paper's text-to-video setting). EDM's
# ImageNet-64 churn (s_churn=40, s_tmin=0.05, s_tmax=50, s_noise=1.003) was compared on 24 held-out videos with
# seeds 1000-1023 (not the evaluation seeds): direction 12% vs 29%, colour 92% for both, so churn stays off.
SAMPLER = dict(s_churn=0.0)
# The card's sample is `make demo`'s video: this prompt, seed 0, the pipeline's defaults (smooth tile blending).
DEMO_PROMPT = "a red circle moving right slowly on a gray background"
# The fine-tunes reuse the base's scheduler, and with it the high-noise share of every batch.
FINETUNE_ARGS = [
    "--num_levels", "3", "--train_batch_size", "8", "--lr_warmup_steps", "20", "--ema_half_life", "100",
    "--checkpointing_steps", "200", "--logging_steps", "25", "--keep_condition_above_sigma", "10",
]  # fmt: skip
# Stage 3 (docs/probes.md, probe 11): level 0 of the deep pyramid, expanded again into 3 levels with shallow fusion
# (the coarser level's pixels beside the fine patch's) and fine-tuned jointly for 4000 steps. Its finer levels
# follow their context and carry level 0's motion (direction 94% against 64% for the deep pyramid).
SHALLOW_FINETUNE_ARGS = [
    "--num_levels", "3", "--train_batch_size", "8", "--lr_warmup_steps", "20", "--ema_half_life", "500",
    "--checkpointing_steps", "500", "--logging_steps", "100", "--keep_condition_above_sigma", "10",
    "--model_overrides", json.dumps({"context_fusion": "shallow"}),
]  # fmt: skip


def run(cmd: list[str]) -> None:
    print("+", shlex.join(cmd), flush=True)
    # One thread per process: on a shared 2-core machine OpenMP spinning costs more than it gains.
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="models/hpdm-shapes-demo")
    p.add_argument("--data_dir", default="data/shapes")
    p.add_argument("--num_videos", type=int, default=2000)
    p.add_argument("--base_steps", type=int, default=8000)
    p.add_argument("--finetune_steps", type=int, default=1000)
    p.add_argument("--shallow_finetune_steps", type=int, default=4000)
    p.add_argument("--work_dir", default="outputs/demo-training")
    p.add_argument("--eval_videos", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--context_fusion", choices=("deep", "shallow"), default="deep",
        help="deep: the bundled model's; shallow: docs/probes.md, probe 5",
    )  # fmt: skip
    args = p.parse_args()

    py, train = sys.executable, str(HERE / "train_t2v.py")
    work = Path(args.work_dir)
    base, finetuned, level0, shallow = work / "base", work / "finetune", work / "level0", work / "shallow"
    run([py, "-m", "diffusers_hpdm.cli", "make-dataset", args.data_dir, "--num-videos", str(args.num_videos)])
    # Rerunning resumes each stage from its newest checkpoint (a finished stage is reused); delete --work_dir to
    # start over.
    common = ["--train_data_dir", args.data_dir, "--cache_videos", "--seed", str(args.seed),
              "--resume_from_checkpoint", "latest"]  # fmt: skip
    run([py, train, *common, *base_args(args.context_fusion), "--max_train_steps", str(args.base_steps),
         "--output_dir", str(base)])  # fmt: skip
    run([py, train, *common, *FINETUNE_ARGS, "--pretrained_base", str(base),
         "--max_train_steps", str(args.finetune_steps), "--output_dir", str(finetuned)])  # fmt: skip
    run([py, str(HERE / "extract_level0.py"), "--model", str(finetuned), "--out", str(level0)])
    run([py, train, *common, *SHALLOW_FINETUNE_ARGS, "--pretrained_base", str(level0),
         "--max_train_steps", str(args.shallow_finetune_steps), "--output_dir", str(shallow)])  # fmt: skip
    export(shallow, args.output_dir)
    report = Path(args.work_dir) / "eval.json"
    run([py, "-m", "diffusers_hpdm.cli", "evaluate", "--model", args.output_dir, "--compile",
         "--num-videos", str(args.eval_videos), "--out", str(report)])  # fmt: skip
    finish_card(args, json.loads(report.read_text())["summary"])
    return 0


def export(trained: Path, output_dir: str) -> None:
    """The pipeline alone (EMA weights, no checkpoints or validation videos), with the sampler the card documents."""
    from diffusers_hpdm import HierarchicalPatchPipeline

    pipe = HierarchicalPatchPipeline.from_pretrained(trained)
    pipe.scheduler.register_to_config(**SAMPLER)
    pipe.save_pretrained(output_dir)


def card_sample(output_dir: str) -> tuple[list[str], str]:
    """Write the card's sample into ``output_dir`` (``make demo``'s video as a gif, every level as a contact sheet)
    and return the file names and their caption."""
    import torch

    from diffusers_hpdm import HierarchicalPatchPipeline, write_card_sample

    pipe = HierarchicalPatchPipeline.from_pretrained(output_dir)
    out = pipe(DEMO_PROMPT, generator=torch.Generator().manual_seed(0), return_levels=True)
    files = write_card_sample([level[0] for level in out.levels], output_dir)
    caption = (
        f'`make demo`: "{DEMO_PROMPT}", seed 0, the pipeline\'s defaults (smooth tile blending, 32 level-0 '
        "steps, guidance 3). Left: the 16x64x64 output (shown 2x); right: every level, coarse to fine."
    )
    return list(files), caption


def finish_card(args, summary: dict) -> None:
    """Rewrite the model card with the exact commands, the measured metrics and a sample of the output."""
    from diffusers_hpdm import write_model_card
    from diffusers_hpdm.data.synthetic import domain_description

    acc = summary["accuracy"]
    metrics = {
        f"held-out prompt following ({summary['num_videos']} videos)": ", ".join(
            f"{k} {100 * v:.0f}%" for k, v in acc.items()
        ),
        "seam score (tile borders / interior gradient energy)": f"{summary['seam_score']:.3f}",
        "level consistency PSNR (level l downsampled vs level l-1)": ", ".join(
            f"{v:.1f} dB" for v in summary["level_psnr"]
        ),
        "temporal flicker": f"{summary['temporal_flicker']:.4f}",
        "grain (Laplacian energy / the real clips' of the same prompts)": f"{summary['grain']:.2f}",
    }
    training = (
        "Trained on CPU (2 cores) with `make train-demo`, i.e. `python examples/train_demo.py`, on the synthetic "
        f"moving-shapes dataset (`hpdm make-dataset {args.data_dir} --num-videos {args.num_videos}`): a 1-level "
        f"base at 4x16x16 for {args.base_steps} steps (batch 16), expanded to 3 levels with "
        f"`HPDMTransformer.from_base` and fine-tuned for {args.finetune_steps} steps (batch 8); then its level 0, "
        "expanded again into 3 levels with shallow context fusion (`examples/extract_level0.py`, `from_base`), "
        f"fine-tuned jointly for {args.shallow_finetune_steps} steps (batch 8). "
        f"LAMB lr 5e-3, wd 0.01 (biases, norms and the zero-initialised output head without weight decay or layer "
        f"adaptation), cosine schedule, EMA, conditioning dropout 0.1 (none for samples above sigma 10), fp32.\n\n"
        f"Base: `{shlex.join(base_args(args.context_fusion))}`; fine-tune: `{shlex.join(FINETUNE_ARGS)}`; "
        f"shallow fine-tune: `{shlex.join(SHALLOW_FINETUNE_ARGS)}`."
    )
    files, caption = card_sample(args.output_dir)
    write_model_card(
        args.output_dir,
        domain=domain_description(),
        title="HPDM shapes demo (CPU-sized text-to-video)",
        description=(
            "A 3-level, 4M-parameter HPDM text-to-video model trained from scratch on CPU on synthetic moving "
            "shapes (16x64x64 videos from 4x16x16 patches). It exists so that the package can be run, tested and "
            "benchmarked offline; it is not a general-purpose video model. It saw "
            f"~{(16 * args.base_steps + 8 * (args.finetune_steps + args.shallow_finetune_steps)) // 1000}k training "
            "clips (the paper's models see "
            "hundreds of millions). Its level 0 decides the layout and the motion, and the finer levels, which read "
            "the coarser level's pixels (shallow context fusion), keep that motion. Its level 0 draws the shape "
            "near chance, so the outlines are rough, and the finer levels' overlapping tiles disagree, which raises "
            "the seam score (the default smooth blending halves it against the paper's uniform average at the same "
            "accuracy). The metrics below are "
            "measured on attribute combinations never seen in training, with the pipeline's defaults; "
            "docs/evaluation.md and docs/direction.md have the diagnosis and what was tried."
        ),
        example_prompt=DEMO_PROMPT,
        training=training,
        metrics=metrics,
        datasets=["synthetic-moving-shapes"],
        install="# in the root of this repository (the folder that holds models/); requirements.lock pins every "
        "dependency\npip install -c requirements.lock .",
        sample=files,
        sample_caption=caption,
    )


if __name__ == "__main__":
    sys.exit(main())
