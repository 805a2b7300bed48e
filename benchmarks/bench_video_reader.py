"""Seeking video reader vs decoding a whole file: one training clip (16 frames) from a long 640x360 video.

    .venv/bin/python benchmarks/bench_video_reader.py            # ~1 min: 240 frames, 640x360, 16-frame clips
    .venv/bin/python benchmarks/bench_video_reader.py --quick    # ~10 s: 120 frames, 320x180

Both readers return the same frames (checked here for every start). Times are interleaved over the same clip starts
(median of rounds); memory is the size of the decoded frames each reader holds (the whole video vs the clip) and the
frames each decodes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import av
import numpy as np
from common import RESULTS, interleave, paired_ratios, setup_threads

from diffusers_hpdm.data.video_io import read_clip, read_frames


def write_clip(path: Path, num_frames: int, height: int, width: int, gop: int, fps: int = 24) -> None:
    """H.264 (crf 23, a keyframe every ``gop`` frames, B-frames): a moving pattern with noise, as a camera clip."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "23", "g": str(gop), "bf": "2"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(num_frames):
            img = np.stack([(xx + 3 * t) % 256, (yy + 2 * t) % 256, (xx + yy + 5 * t) % 256], -1)
            img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decoded_frames_by_seek(path: Path, start: int, span: int) -> int:
    """Frames the seek decodes for a clip: from the keyframe at or before ``start`` to the clip's last frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate, tb = stream.average_rate, stream.time_base
        container.seek(int(start / (rate * tb)), stream=stream, backward=True, any_frame=False)
        n = 0
        for frame in container.decode(stream):
            n += 1
            if round(float(frame.pts * tb * rate)) >= start + span - 1:
                return n
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    threads = setup_threads(1)  # a data-loader worker decodes on one core
    frames, height, width, clip, gop = (120, 180, 320, 16, 48) if args.quick else (240, 360, 640, 16, 48)
    starts = np.random.default_rng(0).integers(0, frames - clip + 1, size=8).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.mp4"
        write_clip(path, frames, height, width, gop)
        full = read_frames(path)
        for s in starts:  # same frames, every start
            assert np.array_equal(read_clip(path, s, clip), full[s : s + clip])
        del full

        def whole():
            for s in starts:
                read_frames(path)[s : s + clip].copy()

        def seek():
            for s in starts:
                read_clip(path, s, clip)

        times = interleave({"whole_file": whole, "seek": seek}, repeats=args.repeats)
        decoded = [decoded_frames_by_seek(path, s, clip) for s in starts]
        size_mb = path.stat().st_size / 1e6
    frame_mb = height * width * 3 / 1e6
    result = {
        "video": {"frames": frames, "height": height, "width": width, "keyframe_interval": gop, "file_mb": size_mb},
        "clip_frames": clip,
        "starts": starts,
        "threads": threads,
        "per_clip_s": {k: v["median_s"] / len(starts) for k, v in times.items()},
        "speedup_whole_over_seek": paired_ratios(times, "whole_file", "seek"),
        "decoded_frames_per_clip": {"whole_file": frames, "seek_mean": float(np.mean(decoded))},
        "decoded_mb_held": {"whole_file": frames * frame_mb, "seek_clip": clip * frame_mb},
        "times": times,
    }
    name = "bench_video_reader" + ("_quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    r = result["speedup_whole_over_seek"]
    print(
        f"{frames} frames {width}x{height}, {clip}-frame clips: whole file {result['per_clip_s']['whole_file']:.3f} s, "
        f"seek {result['per_clip_s']['seek']:.3f} s per clip -> {r['ratio_of_medians']:.1f}x "
        f"(paired {r['min_paired']:.1f}-{r['max_paired']:.1f}x); decoded frames {frames} vs "
        f"{result['decoded_frames_per_clip']['seek_mean']:.1f}; frames held {frames * frame_mb:.0f} vs "
        f"{clip * frame_mb:.0f} MB -> {RESULTS / name}.json"
    )


if __name__ == "__main__":
    main()
