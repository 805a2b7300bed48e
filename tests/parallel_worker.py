"""Run by tests/test_parallel_slow.py under ``torchrun --nproc_per_node N`` (or alone): the tiny pipeline of
tests/test_pipeline.py sampled with every option that changes how tiles are split, each process saving its outputs."""

import sys

import torch
import torch.distributed as dist
from test_pipeline import PROMPTS, pipe_factory

CASES = {
    "tbs1": dict(tile_batch_size=1),
    "tbs4": dict(tile_batch_size=4),
    "tbs16_cfg": dict(tile_batch_size=16, guidance_scale=3.0),
    "tbs5_shift_offload": dict(tile_batch_size=5, shift_tiles=True, offload_context=True, guidance_scale=1.0),
    "uncached": dict(tile_batch_size=7, cache_context=False),
    "two_prompts_tiles": dict(prompt=PROMPTS, tile_batch_size=3, parallel="tiles", negative_prompt=["blurry"] * 2),
    "three_videos": dict(prompt=PROMPTS, num_videos_per_prompt=2, tile_batch_size=4, return_levels=True),
}


def main(out: str) -> None:
    if "RANK" in __import__("os").environ:
        dist.init_process_group("gloo")
    torch.set_num_threads(1)
    pipe = pipe_factory()
    results, stats = {}, {}
    for name, kw in CASES.items():
        kw = dict(kw)
        prompt = kw.pop("prompt", PROMPTS[0])
        n = (len(prompt) if isinstance(prompt, list) else 1) * kw.get("num_videos_per_prompt", 1)
        gens = [torch.Generator().manual_seed(10 + i) for i in range(n)] if n > 1 else torch.Generator().manual_seed(3)
        kw.setdefault("guidance_scale", 2.0)
        o = pipe(prompt, generator=gens, num_inference_steps=3, output_type="np", **kw)
        results[name] = torch.from_numpy(o.frames)
        if o.levels is not None:
            results[name + "_levels"] = [torch.from_numpy(lv) for lv in o.levels]
        stats[name] = pipe.parallel_share.summary()
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save({"results": results, "stats": stats}, f"{out}.rank{rank}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
