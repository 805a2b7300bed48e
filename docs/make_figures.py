"""Draw the figures of the docs with PIL (no matplotlib): ``python docs/make_figures.py``.

* ``docs/images/pyramid_tiling.png``: the three canvases of the ``tiny-t2v`` pyramid (h-w plane), the 50%-overlap
  tile grid of each level, one finest tile with its nested context chain (``geometry.context_chain``) and the
  relative boxes it reads (paper eq. 7-9).
* ``docs/images/rin_block.png``: one RIN block of a level-l tile with deep context fusion before it.

The geometry in the first figure is computed with the package itself, so the picture cannot drift from the code.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from diffusers_hpdm.geometry import context_chain, level_sizes, tile_plan

OUT = Path(__file__).resolve().parent / "images"
SS = 2  # supersampling factor (drawn at 2x, downscaled with LANCZOS for antialiasing)

INK = (40, 40, 48)
GRID = (200, 204, 212)
PAPER = (255, 255, 255)
CANVAS = (246, 247, 250)
ORANGE = (230, 120, 20)
BLUE = (40, 110, 200)
GREEN = (40, 150, 80)
PURPLE = (150, 80, 170)


def font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size * SS)
        except OSError:
            pass
    return ImageFont.load_default(size=size * SS)


def s(*v: float) -> tuple[int, ...]:
    """Design coordinates -> supersampled pixel coordinates."""
    return tuple(int(round(x * SS)) for x in v)


def dashed_rect(d: ImageDraw.ImageDraw, box, colour, width=2, dash=6):
    x0, y0, x1, y1 = box
    for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = math.dist(a, b)
        n = max(1, int(length // (2 * dash)))
        for i in range(n + 1):
            t0, t1 = (2 * i * dash) / length, min(1.0, (2 * i + 1) * dash / length)
            if t0 >= 1:
                break
            p = (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0)
            q = (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)
            d.line([s(*p), s(*q)], fill=colour, width=width * SS)


def curved_arrow(d: ImageDraw.ImageDraw, p0, p1, bend, colour, width=2):
    """Quadratic Bezier from p0 to p1 whose control point is the midpoint raised by ``bend``; arrowhead at p1."""
    c = ((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2 - bend)
    pts = []
    for i in range(41):
        t = i / 40
        x = (1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * c[0] + t**2 * p1[0]
        y = (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * c[1] + t**2 * p1[1]
        pts.append((x, y))
    d.line([s(*p) for p in pts], fill=colour, width=width * SS, joint="curve")
    (xa, ya), (xb, yb) = pts[-3], pts[-1]
    ang = math.atan2(yb - ya, xb - xa)
    head = [
        (xb, yb),
        (xb - 11 * math.cos(ang - 0.4), yb - 11 * math.sin(ang - 0.4)),
        (xb - 11 * math.cos(ang + 0.4), yb - 11 * math.sin(ang + 0.4)),
    ]
    d.polygon([s(*p) for p in head], fill=colour)


def pyramid_figure(path: Path) -> None:
    r, growth, num_levels = (4, 16, 16), (2, 2, 2), 3  # the tiny-t2v preset
    sizes = level_sizes(r, num_levels, growth)
    plans = [tile_plan(size, r) for size in sizes]
    boxes = [p.boxes() for p in plans]
    fine = plans[-1].offsets.index((0, 24, 40))  # one finest tile
    chain = context_chain(boxes, num_levels - 1)
    picked = [int(chain[k][fine]) for k in range(num_levels - 1)] + [fine]
    colours = [GREEN, BLUE, ORANGE]

    W, H = 1240, 610
    img = Image.new("RGB", s(W, H), PAPER)
    d = ImageDraw.Draw(img, "RGBA")
    px = 6  # drawn pixels per canvas pixel
    gap = 70
    xs, x = [], 40
    for size in sizes:
        xs.append(x)
        x += size[2] * px + gap
    yc = 330

    d.text(s(40, 18), "Patch pyramid, tiles and context (tiny-t2v: r = 4x16x16, growth 2 per axis, 3 levels)",
           font=font(20), fill=INK)  # fmt: skip
    d.text(s(40, 48), "h-w plane shown; frames are tiled and read the same way. Every canvas covers the whole video "
           "[0, 1]^3.", font=font(14), fill=(90, 90, 100))  # fmt: skip

    geo = []  # per level: (x0, y0, drawn size)
    for lvl, (size, plan) in enumerate(zip(sizes, plans)):
        side = size[2] * px
        x0, y0 = xs[lvl], yc - side / 2
        geo.append((x0, y0, side))
        d.rectangle([s(x0, y0), s(x0 + side, y0 + side)], fill=CANVAS, outline=INK, width=2 * SS)
        # 50%-overlap grid: tile starts every r/2 canvas pixels.
        step = r[2] // 2 * px
        for k in range(1, side // step):
            d.line([s(x0 + k * step, y0), s(x0 + k * step, y0 + side)], fill=GRID, width=SS)
            d.line([s(x0, y0 + k * step), s(x0 + side, y0 + k * step)], fill=GRID, width=SS)
        # Two overlapping tiles in the top-left corner to show the 50% overlap.
        if lvl > 0:
            tile = r[2] * px
            d.rectangle(
                [s(x0, y0), s(x0 + tile, y0 + tile)], fill=(120, 120, 140, 40), outline=(120, 120, 140), width=SS
            )
            d.rectangle([s(x0 + tile / 2, y0), s(x0 + 1.5 * tile, y0 + tile)], fill=(170, 120, 170, 40),
                        outline=(150, 100, 150), width=SS)  # fmt: skip
        n_axis = len({o[2] for o in plan.offsets})
        label = f"level {lvl}: {'x'.join(map(str, size))}"
        tiles = (
            "1 tile (s = 1)" if len(plan) == 1 else f"{n_axis}x{n_axis}x{n_axis} = {len(plan)} tiles (s = 1/{2**lvl})"
        )
        d.text(s(x0, y0 + side + 10), label, font=font(15), fill=INK)
        d.text(s(x0, y0 + side + 30), tiles, font=font(13), fill=(90, 90, 100))

    def rect_of(level: int, box) -> tuple[float, float, float, float]:
        """Drawn rectangle of a global box on a level's canvas (h-w plane)."""
        x0, y0, side = geo[level]
        dh, dw, sh, sw = float(box[1]), float(box[2]), float(box[4]), float(box[5])
        return (x0 + dw * side, y0 + dh * side, x0 + (dw + sw) * side, y0 + (dh + sh) * side)

    # The chain: each picked tile drawn solid on its own level, dashed (its footprint) on every coarser level.
    for lvl, idx in enumerate(picked):
        box = boxes[lvl][idx]
        d.rectangle([s(*rect_of(lvl, box)[:2]), s(*rect_of(lvl, box)[2:])], outline=colours[lvl], width=4 * SS)
        for k in range(lvl):
            dashed_rect(d, rect_of(k, box), colours[lvl], width=2)

    # Context reads: from the fine tile's footprint at every coarser level into the fine tile.
    fx0, fy0, fx1, _ = rect_of(2, boxes[2][fine])
    target = ((fx0 + fx1) / 2, fy0 - 2)
    for k, bend in ((1, 110), (0, 250)):
        a0, b0, a1, _ = rect_of(k, boxes[2][fine])
        curved_arrow(d, ((a0 + a1) / 2, b0 - 2), target, bend, PURPLE, width=2)
    d.text(s(300, 92), "context read before every block the fine tile runs:", font=font(13), fill=PURPLE)
    d.text(s(300, 110), "ctx = mean over k<l of grid_sample(W_c a_k, relative box)", font=font(13), fill=PURPLE)

    # Legend.
    lx, ly = 905, 150
    items = [
        (ORANGE, "solid", "a level-2 tile: a patch of r = 4x16x16 voxels"),
        (BLUE, "solid", "its most centred container at level 1"),
        (GREEN, "solid", "level 0: one tile = the whole video"),
        (ORANGE, "dashed", "the level-2 tile's box read in coarser tiles"),
        (BLUE, "dashed", "the level-1 tile's box in level 0"),
    ]
    for i, (colour, style, text) in enumerate(items):
        y = ly + i * 30
        if style == "solid":
            d.rectangle([s(lx, y), s(lx + 26, y + 16)], outline=colour, width=3 * SS)
        else:
            dashed_rect(d, (lx, y, lx + 26, y + 16), colour, width=2, dash=4)
        d.text(s(lx + 36, y), text, font=font(12), fill=INK)
    notes = [
        "grey grid: windows start every r/2 (50% overlap),",
        "  the last one snaps to the edge: 2R/r - 1 per axis",
        "relative box (eq. 8): ((d_l - d_k) / s_k, s_l / s_k)",
        "chain (geometry.context_chain): level l-1 container,",
        "  then the container of that tile, ... (nested,",
        "  exactly as the boxes seen in training)",
        "cache: per coarse tile and block, W_c a_k,",
        "  computed once per level (compute_context)",
    ]
    for i, text in enumerate(notes):
        d.text(s(lx, ly + 170 + i * 21), text, font=font(12), fill=(70, 70, 80))

    img = img.resize((W, H), Image.LANCZOS).quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)


def box(d, x, y, w, h, title, sub="", colour=INK, fill=(246, 247, 250)):
    d.rounded_rectangle([s(x, y), s(x + w, y + h)], radius=8 * SS, fill=fill, outline=colour, width=2 * SS)
    d.text(s(x + 10, y + 8), title, font=font(14), fill=colour)
    if sub:
        d.multiline_text(s(x + 10, y + 30), sub, font=font(11), fill=(80, 80, 90), spacing=3 * SS)


def arrow(d, p0, p1, colour=INK, width=2):
    d.line([s(*p0), s(*p1)], fill=colour, width=width * SS)
    ang = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
    head = [
        p1,
        (p1[0] - 10 * math.cos(ang - 0.4), p1[1] - 10 * math.sin(ang - 0.4)),
        (p1[0] - 10 * math.cos(ang + 0.4), p1[1] - 10 * math.sin(ang + 0.4)),
    ]
    d.polygon([s(*p) for p in head], fill=colour)


def rin_figure(path: Path) -> None:
    W, H = 1240, 470
    img = Image.new("RGB", s(W, H), PAPER)
    d = ImageDraw.Draw(img, "RGBA")
    d.text(s(30, 16), "Block b for a level-l tile (runs only if levels_per_block[b] > l)", font=font(20), fill=INK)

    # Token stream (top) and latent stream (bottom).
    box(
        d,
        30,
        70,
        190,
        92,
        "tokens a_l  (N, T, D_tok)",
        "linear patchify of c_in * x\n+ global (f, h, w) coords\nof every token",
    )
    box(d, 260, 70, 250, 92, "deep context fusion (l > 0)", "a_l <- W_a a_l + ctx + W_p coords + b\nctx = mean_k grid_sample(W_c a_k)\n(eq. 7-9; pass-through at init)", PURPLE)  # fmt: skip
    box(d, 560, 60, 170, 112, "read", "latents cross-attend\nto tokens, + MLP\ncost linear in T", BLUE)
    box(d, 770, 60, 200, 112, "compute  (x k layers)", "self-attention over\nlatents; keys also the\nconditioning tokens; MLP", BLUE)  # fmt: skip
    box(d, 1010, 60, 200, 112, "write", "tokens cross-attend\nto latents, + MLP\n-> block b+1", BLUE)
    box(d, 30, 240, 190, 92, "latents z_l  (N, M, D_lat)", "learned, one set per level;\n+ noise-level embedding")
    box(d, 560, 240, 410, 92, "conditioning tokens  (N, S, D_lat)", "[noise-level emb + box emb]  [class emb]  [text proj]\n"
        "dropped -> learned null (CFG); padded text masked", GREEN)  # fmt: skip
    box(d, 30, 375, 480, 70, "cache (levels k < l): LevelContext.features[b]", "W_c a_k of every coarse tile, recorded\nonce per level by compute_context", PURPLE)  # fmt: skip

    arrow(d, (220, 116), (260, 116))
    arrow(d, (510, 116), (560, 116))
    arrow(d, (730, 116), (770, 116))
    arrow(d, (970, 116), (1010, 116))
    arrow(d, (220, 286), (520, 286))
    d.line([s(520, 286), s(520, 190), s(600, 190)], fill=INK, width=2 * SS)
    arrow(d, (600, 190), (600, 172))
    arrow(d, (765, 240), (850, 172), GREEN)
    arrow(d, (385, 375), (385, 162), PURPLE)
    d.text(s(395, 200), "grid_sample at the\nrelative boxes", font=font(11), fill=PURPLE)
    d.text(s(600, 185), " z_l", font=font(11), fill=INK)
    d.multiline_text(s(1000, 190), "tokens and latents go on\nto block b+1; after the last\nblock: norm + linear head\n-> F (v-prediction) per voxel",
           font=font(12), fill=(70, 70, 80))  # fmt: skip
    img = img.resize((W, H), Image.LANCZOS).quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, fn in (("pyramid_tiling.png", pyramid_figure), ("rin_block.png", rin_figure)):
        path = OUT / name
        fn(path)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
