"""Synthetic text-to-video data: moving coloured shapes with templated captions (DESIGN.md §5).

Everything in the project (tests, the demo model, benchmarks) trains on this offline domain. A video shows one
antialiased shape of a palette colour on a dark, softly textured background, moving along one axis at one of two
speeds. Its caption is generated from the attributes (`caption`) and can be read back (`parse_prompt`); the
analytic detector in `diffusers_hpdm.evaluation` reads the same attributes back from pixels.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import numpy as np

# Far apart in RGB and saturated, so they stay distinguishable after blur, yuv420p and 4x downsampling.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 200, 50),
    "blue": (45, 90, 255),
    "yellow": (240, 220, 30),
    "magenta": (225, 45, 225),
    "cyan": (35, 215, 230),
}
# All dark-ish: every colour above differs from every background by more than 130 (RGB L2).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "gray": (72, 72, 72),
    "dark blue": (18, 24, 80),
    "dark green": (18, 64, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# Displacement over the whole clip, as a fraction of the frame size along the motion axis.
SPEEDS: dict[str, float] = {"slowly": 0.15, "quickly": 0.4}
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "direction", "speed", "background")

# (colour, shape, direction) triples never shown in training; each value still appears in other training triples.
HELDOUT_COMBINATIONS: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "up"),
    ("green", "circle", "left"),
    ("blue", "square", "down"),
    ("yellow", "triangle", "right"),
    ("magenta", "circle", "up"),
    ("cyan", "square", "left"),
)
_DIRECTION_VECTORS = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}  # (dy, dx)
_GENERATOR_VERSION = 1  # bump when the pixels or the metadata layout change: it invalidates cached folders
_SUPERSAMPLE = 4


def caption(attrs: dict) -> str:
    """The templated caption, e.g. ``"a red circle moving left quickly on a gray background"``."""
    return (
        f"a {attrs['colour']} {attrs['shape']} moving {attrs['direction']} {attrs['speed']}"
        f" on a {attrs['background']} background"
    )


def domain_description() -> str:
    """What a model trained on this domain knows, in one paragraph (model cards, ``hpdm generate --help``)."""
    return (
        "Trained only on the synthetic moving-shapes domain: one shape moving along one axis, captioned "
        "'a COLOUR SHAPE moving DIRECTION SPEED on a BACKGROUND background' with colours "
        f"{', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; directions {', '.join(DIRECTIONS)}; speeds "
        f"{', '.join(SPEEDS)}; backgrounds {', '.join(BACKGROUNDS)}. Anything else (people, objects, scenes) "
        "is outside what it has seen."
    )


def attribute_label(attrs: dict) -> int:
    """Class index of the (colour, shape, direction) triple, in ``[0, 72)``, for class-conditional training."""
    triples = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))
    return triples.index((attrs["colour"], attrs["shape"], attrs["direction"]))


_SYNONYMS = {
    "shape": {"circle": "circle", "circles": "circle", "disc": "circle", "disk": "circle", "square": "square"}
    | {"squares": "square", "triangle": "triangle", "triangles": "triangle"},
    "direction": {d: d for d in DIRECTIONS}
    | {"leftward": "left", "leftwards": "left", "rightward": "right", "rightwards": "right"}
    | {"upward": "up", "upwards": "up", "downward": "down", "downwards": "down"},
    "speed": {"slowly": "slowly", "slow": "slowly", "quickly": "quickly", "quick": "quickly", "fast": "quickly"},
}


def _first_match(text: str, vocabulary: dict[str, str]) -> str | None:
    """Canonical value of the earliest whole-word (or whole-phrase) occurrence of a vocabulary entry."""
    best = None
    for word, value in vocabulary.items():
        match = re.search(rf"\b{re.escape(word)}\b", text)
        if match is not None and (best is None or match.start() < best[0]):
            best = (match.start(), value)
    return None if best is None else best[1]


def parse_prompt(text: str) -> dict[str, str | None]:
    """Read the attributes back from a prompt; ``None`` for those it does not mention.

    Accepts the `caption` template and loose variants ("a fast blue disc moving to the left", "grey"). The
    background is read from an "on a(n) ... background" phrase first, so "dark blue background" does not set
    the colour.
    """
    text = " ".join(text.lower().replace("grey", "gray").replace("colour", "color").split())
    background = None
    match = re.search(r"\bon an? ([a-z ]+?) background\b", text)
    if match is not None:
        background = _first_match(match.group(1), {b: b for b in sorted(BACKGROUNDS, key=len, reverse=True)})
        text = text[: match.start()] + text[match.end() :]
    return {
        "colour": _first_match(text, {c: c for c in COLOURS}),
        "shape": _first_match(text, _SYNONYMS["shape"]),
        "direction": _first_match(text, _SYNONYMS["direction"]),
        "speed": _first_match(text, _SYNONYMS["speed"]),
        "background": background,
    }


def _coverage(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean inside-test on sample points (pixel units). All shapes span a ``2r x 2r`` box."""
    if shape == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if shape == "square":
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    if shape == "triangle":  # apex up, base = height = 2r: fills half of its box
        depth = yy - (cy - r)
        return (depth >= 0) & (depth <= 2 * r) & (np.abs(xx - cx) <= depth / 2)
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def _background(attrs: dict, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Static base colour plus a low-frequency texture of amplitude ~10 (out of 255). [H, W, 3] float."""
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    freq = rng.uniform(0.5, 1.5, size=(2, 2))
    phase = rng.uniform(0, 2 * np.pi, size=2)
    texture = sum(np.sin(2 * np.pi * (freq[i, 0] * yy + freq[i, 1] * xx) + phase[i]) for i in range(2))
    return np.asarray(BACKGROUNDS[attrs["background"]], dtype=np.float64) + 5.0 * texture[..., None]


def render_video(attrs: dict, num_frames: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    r"""Render one clip.

    Args:
        attrs (`dict`): ``colour``, ``shape``, ``direction``, ``speed``, ``background`` (values from the module's
            attribute tables).
        num_frames, height, width (`int`): output size. The trajectory spans the clip whatever `num_frames` is
            (`SPEEDS` are per clip), so a single frame is a still image.
        rng (`np.random.Generator`): the only source of randomness (size, start position, texture).

    Returns:
        `np.ndarray`: uint8 ``[F, H, W, 3]``. The shape's half-size is ``~0.2 * min(H, W)``, its edges are
        antialiased by 4x4 supersampling, and it stays fully inside the frame for the whole clip.
    """
    radius = rng.uniform(0.18, 0.22) * min(height, width)
    dy, dx = _direction_vector(attrs["direction"])
    margin = 1.0
    centre, step = [], []
    for length, unit in ((height, dy), (width, dx)):
        lo, hi = radius + margin, length - radius - margin
        travel = min(SPEEDS[attrs["speed"]] * length, max(hi - lo, 0.0)) if unit != 0 else 0.0
        start = rng.uniform(lo, max(hi - travel, lo))
        centre.append(start if unit >= 0 else start + travel)
        step.append(unit * travel)
    background = _background(attrs, height, width, rng)
    colour = np.asarray(COLOURS[attrs["colour"]], dtype=np.float64)

    s = _SUPERSAMPLE
    sub_y = (np.arange(height * s) + 0.5) / s
    sub_x = (np.arange(width * s) + 0.5) / s
    yy, xx = np.meshgrid(sub_y, sub_x, indexing="ij")  # (H*s, W*s)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frac = t / (num_frames - 1) if num_frames > 1 else 0.0
        cy, cx = centre[0] + frac * step[0], centre[1] + frac * step[1]
        inside = _coverage(attrs["shape"], yy, xx, cy, cx, radius)
        alpha = inside.reshape(height, s, width, s).mean(axis=(1, 3))[..., None]  # (H, W, 1)
        frames[t] = np.clip(np.rint(alpha * colour + (1 - alpha) * background), 0, 255).astype(np.uint8)
    return frames


def _direction_vector(direction: str) -> tuple[float, float]:
    if direction not in _DIRECTION_VECTORS:
        raise ValueError(f"Unknown direction {direction!r}; expected one of {DIRECTIONS}.")
    return _DIRECTION_VECTORS[direction]


def _validate_triples(triples) -> list[tuple[str, str, str]]:
    out = []
    for triple in triples:
        colour, shape, direction = triple
        if colour not in COLOURS or shape not in SHAPES or direction not in DIRECTIONS:
            raise ValueError(f"Held-out combination {triple!r} must be (colour, shape, direction) from the tables.")
        out.append((colour, shape, direction))
    return out


def training_attributes(index: int, seed: int, heldout_combinations=HELDOUT_COMBINATIONS) -> dict:
    """Attributes of training video `index`: balanced cycles over every allowed combination, shuffled per cycle.

    Depends only on (index, seed, held-out set), so a larger dataset extends a smaller one.
    """
    heldout = set(_validate_triples(heldout_combinations))
    combos = [
        dict(colour=c, shape=s, direction=d, speed=v, background=b)
        for c, s, d, v, b in itertools.product(COLOURS, SHAPES, DIRECTIONS, SPEEDS, BACKGROUNDS)
        if (c, s, d) not in heldout
    ]
    cycle, position = divmod(index, len(combos))
    order = np.random.default_rng([seed, 1, cycle]).permutation(len(combos))
    return dict(combos[order[position]])


def heldout_prompts(heldout_combinations=HELDOUT_COMBINATIONS) -> list[dict]:
    """One prompt per held-out triple and speed; the background cycles through the table."""
    prompts = []
    for j, (colour, shape, direction) in enumerate(_validate_triples(heldout_combinations)):
        for k, speed in enumerate(SPEEDS):
            background = list(BACKGROUNDS)[(2 * j + k) % len(BACKGROUNDS)]
            attrs = dict(colour=colour, shape=shape, direction=direction, speed=speed, background=background)
            prompts.append({"text": caption(attrs), **attrs, "label": attribute_label(attrs)})
    return prompts


def _write_mp4(path: Path, frames: np.ndarray, fps: int, crf: int, pixel_format: str = "yuv420p") -> None:
    import imageio.v3 as iio

    tmp = path.with_name(path.stem + ".partial.mp4")
    iio.imwrite(
        tmp,
        frames,
        plugin="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat=pixel_format,
        quality=None,  # rate control comes from -crf below
        macro_block_size=1,  # sizes are checked to be even; never let ffmpeg rescale
        ffmpeg_log_level="error",
        output_params=["-crf", str(crf), "-threads", "1"],
    )
    os.replace(tmp, path)


def generate_dataset(
    output_dir: str | os.PathLike,
    num_videos: int,
    num_frames: int = 16,
    height: int = 64,
    width: int = 64,
    fps: int = 8,
    seed: int = 0,
    heldout_combinations=HELDOUT_COMBINATIONS,
    crf: int = 10,
    pixel_format: str = "yuv420p",
) -> Path:
    r"""Write a synthetic text-to-video dataset folder, or reuse it if it is already complete.

    Layout (readable by `load_video_dataset` and by `datasets.load_dataset("videofolder", ...)`)::

        output_dir/videos/000000.mp4 ...      # H.264, `pixel_format`, crf `crf` (colours survive the round trip)
        output_dir/metadata.jsonl             # file_name, text, label, colour, shape, direction, speed,
                                              # background, split="train"
        output_dir/heldout_prompts.json       # [{text, colour, shape, direction, speed, background, label}]
        output_dir/dataset_info.json          # the parameters: the cache key, written last

    `pixel_format` "yuv420p" plays everywhere but stores chroma at half resolution: below ~32 pixels that blurs the
    shapes' colour edges (the detector's shape accuracy on 8x16x16 files drops to ~85%); "yuv444p" keeps full
    chroma. Downsampling decoded 64x64 videos (as the pyramid does) is unaffected.

    Video i depends only on (seed, i): same seed gives the same metadata and pixels, and the held-out
    (colour, shape, direction) triples never appear in the training metadata.

    Returns:
        `Path`: `output_dir`.
    """
    for name, value in (("num_videos", num_videos), ("num_frames", num_frames), ("fps", fps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
            raise ValueError(f"`{name}` must be an even integer >= 2 (yuv420p H.264 needs even sizes), got {value!r}.")
    root = Path(output_dir)
    info = {
        "generator_version": _GENERATOR_VERSION,
        "num_videos": num_videos,
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "fps": fps,
        "seed": seed,
        "crf": crf,
        "pixel_format": pixel_format,
        "heldout_combinations": [list(t) for t in _validate_triples(heldout_combinations)],
    }
    info_path = root / "dataset_info.json"
    if _is_complete(root, info):
        return root
    (root / "videos").mkdir(parents=True, exist_ok=True)
    info_path.unlink(missing_ok=True)  # incomplete until rewritten at the end

    rows = []
    for i in range(num_videos):
        attrs = training_attributes(i, seed, heldout_combinations)
        frames = render_video(attrs, num_frames, height, width, np.random.default_rng([seed, 0, i]))
        file_name = f"videos/{i:06d}.mp4"
        _write_mp4(root / file_name, frames, fps, crf, pixel_format)
        rows.append({"file_name": file_name, "text": caption(attrs), "label": attribute_label(attrs), **attrs})
        rows[-1]["split"] = "train"
    with open(root / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    with open(root / "heldout_prompts.json", "w") as f:
        json.dump(heldout_prompts(heldout_combinations), f, indent=1)
    with open(info_path, "w") as f:
        json.dump(info, f, indent=1)
    return root


def _is_complete(root: Path, info: dict) -> bool:
    """True when `root` holds a finished dataset generated with exactly these parameters."""
    try:
        with open(root / "dataset_info.json") as f:
            if json.load(f) != info:
                return False
        with open(root / "metadata.jsonl") as f:
            names = [json.loads(line)["file_name"] for line in f if line.strip()]
    except (OSError, ValueError, KeyError):
        return False
    return (
        len(names) == info["num_videos"]
        and (root / "heldout_prompts.json").is_file()
        and all((root / n).is_file() for n in names)
    )
