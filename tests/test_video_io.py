"""Seeking video reader: `read_clip` gives the frames of a full decode, decoding only the clip's keyframe interval."""

import json

import numpy as np
import pytest
import torch

from diffusers_hpdm.data import load_video_dataset
from diffusers_hpdm.data.video_io import _seek_clip, count_frames, read_clip, read_frames

av = pytest.importorskip("av")


def write_video(path, num_frames: int, height: int = 48, width: int = 64, gop: int = 10, fps: int = 24, seed: int = 0):
    """H.264 with a keyframe every ``gop`` frames and B-frames (decode order != presentation order); every frame
    distinct (a moving gradient plus noise)."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"bf": "2", "g": str(gop), "keyint_min": str(gop)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yy, xx = np.mgrid[:height, :width]
        for t in range(num_frames):
            img = np.stack([(xx * 4 + t * 7) % 256, (yy * 5 + t * 3) % 256, (xx + yy + t * 11) % 256], -1)
            img = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "long.mp4", num_frames=75)


def test_count_frames_reads_the_container(long_video):
    assert count_frames(long_video) == 75 == read_frames(long_video).shape[0]


@pytest.mark.parametrize(
    "start,num_frames,stride",
    [(0, 16, 1), (13, 16, 1), (20, 8, 1), (59, 16, 1), (3, 10, 3), (41, 12, 2), (74, 1, 1)],
    ids=["first", "mid-gop", "on-keyframe", "last", "stride3", "stride2", "last-frame"],
)
def test_read_clip_equals_slicing_a_full_decode(long_video, start, num_frames, stride):
    full = read_frames(long_video)
    clip = read_clip(long_video, start, num_frames, stride)
    # The same decoder on the same packets from a keyframe: bit-exact frames.
    assert np.array_equal(clip, full[start : start + (num_frames - 1) * stride + 1 : stride])
    span = (num_frames - 1) * stride + 1
    assert _seek_clip(long_video, start, span, stride) is not None  # the seek served it, not the fallback


def test_read_clip_from_bytes_and_bad_requests(long_video):
    data = long_video.read_bytes()
    assert np.array_equal(read_clip(data, 30, 5), read_frames(long_video)[30:35])
    with pytest.raises(ValueError, match="fewer than"):
        read_clip(long_video, 70, 16)
    with pytest.raises(ValueError, match="`start`"):
        read_clip(long_video, -1, 4)


def test_dataset_items_are_the_same_with_seeking_and_with_full_decoding(tmp_path):
    """Items decoded with the seek (default) equal those cut from whole decoded files (``cache_frames``): the same
    temporal crops (the container's frame count equals the decoded one) and the same frames."""
    (tmp_path / "videos").mkdir()
    rows = []
    for i, n in enumerate([40, 23, 9]):  # the last one is too short for the clip: skipped in both modes
        write_video(tmp_path / "videos" / f"{i}.mp4", n, gop=8, seed=i)
        rows.append({"file_name": f"videos/{i}.mp4", "text": f"clip {i}"})
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(num_frames=6, height=24, width=32, frame_stride=2, seed=3)
    seeking, whole = load_video_dataset(tmp_path, **kw), load_video_dataset(tmp_path, cache_frames=True, **kw)
    for epoch in (0, 1):
        seeking.set_epoch(epoch)
        whole.set_epoch(epoch)
        for i in range(2):
            a, b = seeking[i], whole[i]
            assert a["text"] == b["text"] and torch.equal(a["video"], b["video"])
    assert seeking[2] is None and whole[2] is None
    assert "too short (9 frames" in seeking.skipped[2]
