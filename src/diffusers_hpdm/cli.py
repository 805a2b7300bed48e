"""``hpdm``: generate videos, make the synthetic dataset, evaluate a model.

hpdm generate "a red circle moving right slowly on a gray background" --model models/hpdm-shapes-demo --out v.mp4
hpdm generate "a red circle moving right slowly on a gray background" --video coarse.gif --out sr.mp4
accelerate launch --config_file examples/configs/ddp_cpu.yaml -m diffusers_hpdm.cli generate "..." --out v.mp4
hpdm make-dataset data/synthetic --num-videos 2000
hpdm evaluate --model models/hpdm-shapes-demo --num-videos 64 --out eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_args import (
    debug_requested,
    even_positive_int,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
)

DEFAULT_MODEL = "models/hpdm-shapes-demo"
DEFAULT_PROMPT = "a red circle moving right slowly on a gray background"


def _guidance(values: list[float]) -> float | list[float]:
    """``--guidance 3`` -> 3.0 (every level); ``--guidance 7 3 3`` -> one scale per level."""
    return values[0] if len(values) == 1 else values


def _load_pipeline(model: str, bf16: bool, compile_blocks: bool = False):
    import torch

    from . import HierarchicalPatchPipeline

    if not Path(model).is_dir():
        raise SystemExit(f"error: --model {model!r} is not a folder; pass a pipeline saved with save_pretrained.")
    if not (Path(model) / "model_index.json").is_file():
        raise FileNotFoundError(
            f"--model {model!r} has no model_index.json: pass the folder that save_pretrained wrote (it holds "
            "model_index.json, transformer/, scheduler/, ...), not a sub-folder or a checkpoint-N folder."
        )
    pipe = HierarchicalPatchPipeline.from_pretrained(model)
    if bf16:
        pipe.transformer.to(torch.bfloat16)
    if compile_blocks:  # torch.compile of the repeated RINBlocks: ~1 min to compile on CPU, then faster
        pipe.transformer.compile_repeated_blocks(dynamic=True)
    return pipe


def _read_video(path: str):
    """uint8 ``(F, H, W, 3)`` frames of a video file (mp4, gif, ...), an image (one frame) or a folder of images
    (the frames, in name order)."""
    import numpy as np

    from .data.video_dataset import IMAGE_EXTENSIONS, read_frames

    src = Path(path)
    if src.is_dir():
        files = sorted(f for f in src.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SystemExit(f"error: --video {path!r}: the folder holds no {'/'.join(IMAGE_EXTENSIONS)} frames.")
        return np.concatenate([read_frames(f) for f in files])
    if not src.is_file():
        raise SystemExit(f"error: --video {path!r} is neither a file nor a folder of frames.")
    return read_frames(src)


def _numbered(path: Path, i: int, n: int) -> Path:
    """``out.mp4`` for one video; ``out_0.mp4``, ``out_1.mp4``, ... for several."""
    return path if n == 1 else path.with_name(f"{path.stem}_{i}{path.suffix}")


def _distributed_state():
    """Under ``accelerate launch`` (several processes): accelerate's ``PartialState``, which initialises
    ``torch.distributed`` (gloo on CPU processes, NCCL on GPUs); else ``None``."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import logging

    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("diffusers_hpdm")
    log.addHandler(handler)
    log.setLevel(logging.INFO)  # each process says how many tiles (or videos) it took
    return state


def cmd_generate(args) -> int:
    import torch

    from .io_atomic import check_output_path
    from .visualize import contact_sheet, save_image, save_video

    # Outputs are checked before the model runs: a bad folder fails in a second, not after the whole run.
    out = check_output_path(args.out, "--out", (".mp4", ".gif"))
    if args.contact_sheet:
        check_output_path(args.contact_sheet, "--contact-sheet", (".png", ".jpg", ".jpeg", ".webp"))
    prompts = args.prompt or [DEFAULT_PROMPT]
    state = _distributed_state()
    video = _read_video(args.video) if args.video else None
    pipe = _load_pipeline(args.model, args.bf16, args.compile)
    if state is not None:
        pipe.to(state.device)
    # one prompt: one generator (as always); several: video i from seed + i, so each process can take whole videos
    generator = (
        torch.Generator().manual_seed(args.seed)
        if len(prompts) == 1
        else [torch.Generator().manual_seed(args.seed + i) for i in range(len(prompts))]
    )
    try:
        result = pipe(
            prompts[0] if len(prompts) == 1 else prompts,
            video=video,
            negative_prompt=args.negative_prompt,
            num_frames=args.num_frames,
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            guidance_scale=_guidance(args.guidance),
            overlap_axes=tuple(args.overlap),
            blending=args.blending,
            shift_tiles=args.shift_tiles,
            tile_batch_size=args.tile_batch_size,
            context_sigma=args.context_sigma,
            num_levels=args.num_levels,
            offload_context=args.offload_context,
            generator=generator,
            return_levels=True,
            parallel=args.parallel,
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if state is not None and not state.is_main_process:
        return 0  # every process holds the same videos; only the main process writes them
    for i, prompt in enumerate(prompts):
        path = _numbered(out, i, len(prompts))
        save_video(result.frames[i], path, fps=args.fps)  # atomic and read back: an OSError leaves an old file
        print(f"wrote {path} ({result.frames.shape[1]} frames, {result.frames.shape[2]}x{result.frames.shape[3]})")
        if args.contact_sheet:
            sheet_path = _numbered(Path(args.contact_sheet), i, len(prompts))
            save_image(contact_sheet([lv[i] for lv in result.levels]), sheet_path)
            print(f"wrote {sheet_path} (one row per level, coarse to fine)")
        if args.detect:
            _print_detection(prompt, result.frames[i])
    return 0


def _print_detection(prompt: str, video) -> None:
    """What the synthetic-shapes detector reads back from the video, next to what the prompt asks for."""
    from .data.synthetic import parse_prompt
    from .evaluation.detector import detect_attributes

    found, asked = detect_attributes(video), parse_prompt(prompt)
    keys = [k for k in ("colour", "shape", "direction", "speed") if asked.get(k)]
    print("detector (synthetic shapes): " + ", ".join(f"{k} {found[k]} (asked {asked[k]})" for k in keys))


def cmd_make_dataset(args) -> int:
    from .data import generate_dataset

    path = generate_dataset(
        args.output_dir, args.num_videos, args.num_frames, args.height, args.width, fps=args.fps, seed=args.seed
    )
    print(f"dataset ready in {path}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation.run import evaluate_pipeline
    from .io_atomic import check_output_path, write_text_atomic

    if args.out:
        check_output_path(args.out, "--out", (".json",))
    pipe = _load_pipeline(args.model, args.bf16, args.compile)
    report = evaluate_pipeline(
        pipe,
        num_videos=args.num_videos,
        num_inference_steps=args.steps,
        guidance_scale=_guidance(args.guidance),
        seed=args.seed,
        overlap_axes=tuple(args.overlap),
        blending=args.blending,
        shift_tiles=args.shift_tiles,
        context_sigma=args.context_sigma,
    )
    print(json.dumps(report["summary"], indent=2))
    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


def _vocabulary_epilog() -> str:
    """What the bundled demo model knows, for ``hpdm generate --help``."""
    import textwrap

    from .data.synthetic import domain_description

    return (
        f"The bundled model ({DEFAULT_MODEL}):\n"
        + textwrap.fill(domain_description(), 100, initial_indent="  ", subsequent_indent="  ")
        + "\n  Words outside its tokenizer's vocabulary become one unknown token (a warning names them).\n"
        f'Example:\n  hpdm generate "{DEFAULT_PROMPT}" --out circle.mp4'
    )


def _add_guidance(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--guidance",
        type=non_negative_float,
        nargs="+",
        default=[3.0],
        help="CFG scale, or one per level coarse to fine (e.g. 7 3 3)",
    )


def _add_tiling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overlap", default="fhw", help="axes with 50%% tile overlap, e.g. 'hw'")
    parser.add_argument(
        "--blending",
        default="smooth",
        choices=["smooth", "uniform"],
        help="tile weights (uniform: the paper's average)",
    )
    parser.add_argument(
        "--shift-tiles",
        action="store_true",
        help="alternate between the tile plan and the plan moved by half a stride (no fixed tile borders)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpdm", description="Hierarchical Patch Diffusion Models")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error (or HPDM_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser(
        "generate",
        help="generate a video from a prompt",
        description="Generate a video from a prompt with a saved HierarchicalPatchPipeline.",
        epilog=_vocabulary_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("prompt", nargs="*", help="one or more prompts (several: --out X.mp4 writes X_0.mp4, X_1.mp4, ...)")
    g.add_argument("--model", default=DEFAULT_MODEL, help="a saved HierarchicalPatchPipeline folder")
    g.add_argument("--out", default="outputs/video.mp4", help=".mp4 or .gif")
    g.add_argument("--contact-sheet", default=None, help="also write a PNG with every level's video")
    g.add_argument(
        "--video",
        default=None,
        help="super-resolve this clip (mp4/gif, or a folder of PNG frames) of a coarse level's size: only the "
        "finer levels are sampled",
    )
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--seed", type=non_negative_int, default=0)
    g.add_argument("--steps", type=positive_int, default=32, help="level-0 steps (halved at every finer level)")
    _add_guidance(g)
    g.add_argument("--num-frames", type=positive_int, default=None)
    g.add_argument("--height", type=positive_int, default=None)
    g.add_argument("--width", type=positive_int, default=None)
    _add_tiling(g)
    g.add_argument("--tile-batch-size", type=positive_int, default=16)
    g.add_argument("--fps", type=positive_int, default=8)
    g.add_argument(
        "--context-sigma", type=positive_float, default=0.1, help="re-noising of finished levels for the context"
    )
    g.add_argument("--num-levels", type=positive_int, default=None, help="stop after this many pyramid levels")
    g.add_argument("--offload-context", action="store_true", help="keep the context cache on the CPU")
    g.add_argument(
        "--parallel",
        default="auto",
        choices=["auto", "tiles", "videos", "none"],
        help="under accelerate launch: split each step's tiles, or whole videos, over the processes (auto: videos "
        "when there are at least as many as processes)",
    )
    g.add_argument("--bf16", action="store_true", help="run the transformer in bfloat16")
    g.add_argument("--compile", action="store_true", help="torch.compile the RIN blocks (pays off for many videos)")
    g.add_argument(
        "--detect", action="store_true", help="print the attributes the synthetic-shapes detector reads back"
    )
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("make-dataset", help="write the synthetic moving-shapes text-to-video dataset")
    d.add_argument("output_dir")
    d.add_argument("--num-videos", type=positive_int, default=2000)
    d.add_argument("--num-frames", type=positive_int, default=16)
    d.add_argument("--height", type=even_positive_int, default=64)
    d.add_argument("--width", type=even_positive_int, default=64)
    d.add_argument("--fps", type=positive_int, default=8)
    d.add_argument("--seed", type=non_negative_int, default=0)
    d.set_defaults(func=cmd_make_dataset)

    e = sub.add_parser("evaluate", help="prompt-following, seams, level consistency and flicker on held-out prompts")
    e.add_argument("--model", default=DEFAULT_MODEL)
    e.add_argument("--num-videos", type=positive_int, default=64)
    e.add_argument("--steps", type=positive_int, default=32)
    _add_guidance(e)
    e.add_argument("--seed", type=non_negative_int, default=0)
    e.add_argument("--bf16", action="store_true")
    e.add_argument(
        "--compile", action="store_true", help="torch.compile the RIN blocks (~1.2-1.4x after up to ~1 min)"
    )
    _add_tiling(e)
    e.add_argument("--context-sigma", type=positive_float, default=0.1)
    e.add_argument("--out", default=None, help="write the full report as JSON")
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``hpdm``; errors exit with ``error: <message>`` and no traceback unless ``--debug`` / ``HPDM_DEBUG=1``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return run_command(args.func, args, debug_requested(argv) or args.debug)


if __name__ == "__main__":
    sys.exit(main())
