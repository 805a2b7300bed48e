"""Save level 0 of a trained pyramid as a 1-level base that `examples/train_t2v.py --pretrained_base` can expand
(`make train-demo`'s third stage; docs/probes.md, probe 11): every shared weight and level 0's latents (the fusion
projections, which level 0 never runs, restart as pass-through), the same text encoder, tokenizer and scheduler.
Checks on random inputs that the base computes what the pyramid's level 0 computes.

    python examples/extract_level0.py --model models/hpdm-shapes-demo --out outputs/bundled-level0
"""

from __future__ import annotations

import argparse

import torch

from diffusers_hpdm import HierarchicalPatchPipeline, HPDMTransformer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/hpdm-shapes-demo")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    pipe = HierarchicalPatchPipeline.from_pretrained(args.model)
    pyramid = pipe.transformer.eval()
    base = HPDMTransformer.from_base(pyramid, 1).eval()  # level 0's latents and every shared weight

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, pyramid.config.in_channels, *pyramid.config.patch_size, generator=g)  # (N, C, f, h, w)
    t = torch.tensor([-1.0, 0.5])  # c_noise = log(sigma) / 4 for sigma ~0.02 and ~7
    boxes = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]).repeat(2, 1)  # the whole level-0 canvas
    text = torch.randn(2, 4, pyramid.config.text_embed_dim, generator=g)  # (N, S, E)
    with torch.no_grad():
        ref = pyramid(x, t, boxes, text, level=0).sample
        out = base(x, t, boxes, text, level=0).sample
    err = (ref - out).abs().max().item()
    if err > 1e-5:  # the same weights and kernels on the same inputs: only reduction order may differ
        raise SystemExit(f"level 0 not reproduced: max |diff| {err:.3g}")
    pipe.register_modules(transformer=base)
    pipe.save_pretrained(args.out)
    print(f"saved {args.out}: a 1-level base, level 0 reproduced to {err:.1e}")


if __name__ == "__main__":
    main()
