"""Synthetic dataset generator and `datasets`-backed video loading (DESIGN.md §5)."""

import itertools
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import rounding_atol
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from diffusers_hpdm.data import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    HELDOUT_COMBINATIONS,
    SHAPES,
    SPEEDS,
    caption,
    collate_videos,
    generate_dataset,
    load_video_dataset,
    parse_prompt,
    render_video,
)
from diffusers_hpdm.data.synthetic import training_attributes

SIZE = dict(num_frames=8, height=32, width=32)


def _write_mp4(path, frames, fps=8):
    iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264", quality=None, macro_block_size=1,
                ffmpeg_log_level="error", output_params=["-crf", "10"])  # fmt: skip


def _read(path):
    return iio.imread(path, plugin="FFMPEG", index=None)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("shapes") / "ds", num_videos=8, seed=3, **SIZE)


# ---------------------------------------------------------------- captions


def test_caption_parse_round_trip_every_combination():
    for colour, shape, direction, speed, background in itertools.product(
        COLOURS, SHAPES, DIRECTIONS, SPEEDS, BACKGROUNDS
    ):
        attrs = dict(colour=colour, shape=shape, direction=direction, speed=speed, background=background)
        assert parse_prompt(caption(attrs)) == attrs


def test_parse_prompt_variants_and_missing():
    assert parse_prompt("A fast cyan disc moving leftwards on a grey background") == dict(
        colour="cyan", shape="circle", direction="left", speed="quickly", background="gray"
    )
    # the background's "blue" must not become the colour; missing attributes are None
    assert parse_prompt("a square on a dark blue background") == dict(
        colour=None, shape="square", direction=None, speed=None, background="dark blue"
    )


# ---------------------------------------------------------------- rendering


@settings(max_examples=25, deadline=None)
@given(
    attrs=st.fixed_dictionaries(
        {
            "colour": st.sampled_from(list(COLOURS)),
            "shape": st.sampled_from(SHAPES),
            "direction": st.sampled_from(DIRECTIONS),
            "speed": st.sampled_from(list(SPEEDS)),
            "background": st.sampled_from(list(BACKGROUNDS)),
        }
    ),
    frames=st.integers(2, 6),
    height=st.integers(12, 40),
    width=st.integers(12, 40),
    seed=st.integers(0, 2**16),
)
def test_render_video_stays_in_frame_and_moves(attrs, frames, height, width, seed):
    video = render_video(attrs, frames, height, width, np.random.default_rng(seed))
    assert video.shape == (frames, height, width, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video, render_video(attrs, frames, height, width, np.random.default_rng(seed)))
    distance = np.linalg.norm(video.astype(float) - np.array(BACKGROUNDS[attrs["background"]]), axis=-1)
    mask = distance > 40  # texture stays within ~15 of the base colour; shapes are > 130 away
    assert not (mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any())
    assert mask.sum(axis=(1, 2)).min() > 0.03 * min(height, width) ** 2  # visible in every frame
    ys, xs = np.arange(height), np.arange(width)
    cy = (mask.sum(2) @ ys) / mask.sum((1, 2))
    cx = (mask.sum(1) @ xs) / mask.sum((1, 2))
    dy, dx = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[attrs["direction"]]
    length = height if dy else width
    radius = 0.22 * min(height, width)
    expected = min(SPEEDS[attrs["speed"]] * length, length - 2 * radius - 2)  # travel is clamped to fit
    moved = (cy[-1] - cy[0]) * dy + (cx[-1] - cx[0]) * dx
    assert moved >= 0.8 * expected - 1.0  # in the stated direction, by about the stated amount
    assert abs((cy[-1] - cy[0]) * dx) + abs((cx[-1] - cx[0]) * dy) < 1.0  # no sideways drift


def test_antialiased_edges():
    attrs = dict(colour="red", shape="circle", direction="left", speed="slowly", background="black")
    frame = render_video(attrs, 1, 64, 64, np.random.default_rng(0))[0].astype(float)
    levels = np.unique(np.round(frame[..., 0] / 8))
    assert len(levels) > 10  # intermediate values along the edge, not a binary mask


# ---------------------------------------------------------------- generate_dataset


def test_training_attributes_exclude_heldout_and_are_balanced():
    heldout = set(HELDOUT_COMBINATIONS)
    allowed = len(COLOURS) * len(SHAPES) * len(DIRECTIONS) * len(SPEEDS) * len(BACKGROUNDS) - len(heldout) * 8
    seen = [tuple(training_attributes(i, seed=5).values()) for i in range(allowed)]
    assert len(set(seen)) == allowed  # one full cycle visits every allowed combination exactly once
    assert not {s[:3] for s in seen} & heldout
    for value_set, position in ((COLOURS, 0), (SHAPES, 1), (DIRECTIONS, 2)):
        assert {s[position] for s in seen} == set(value_set)  # every value still trains in other triples


def test_generate_dataset_layout(dataset_dir):
    rows = [json.loads(line) for line in open(dataset_dir / "metadata.jsonl")]
    assert len(rows) == 8
    for row in rows:
        assert row["split"] == "train" and row["text"] == caption(row)
        assert (row["colour"], row["shape"], row["direction"]) not in set(HELDOUT_COMBINATIONS)
        video = _read(dataset_dir / row["file_name"])
        assert video.shape == (8, 32, 32, 3)
    heldout = json.load(open(dataset_dir / "heldout_prompts.json"))
    assert {(p["colour"], p["shape"], p["direction"]) for p in heldout} == set(HELDOUT_COMBINATIONS)
    assert all(parse_prompt(p["text"])["colour"] == p["colour"] for p in heldout)
    info = json.load(open(dataset_dir / "dataset_info.json"))
    assert info["num_videos"] == 8 and info["seed"] == 3


def test_mp4_round_trip_keeps_colours(dataset_dir):
    row = json.loads(open(dataset_dir / "metadata.jsonl").readline())
    rendered = render_video(row, 8, 32, 32, np.random.default_rng([3, 0, 0]))
    decoded = _read(dataset_dir / row["file_name"]).astype(float)
    assert np.abs(decoded - rendered).mean() < 4.0  # out of 255, despite yuv420p


def test_generate_dataset_deterministic_and_idempotent(dataset_dir, tmp_path):
    again = generate_dataset(tmp_path / "again", num_videos=8, seed=3, **SIZE)
    assert (again / "metadata.jsonl").read_text() == (dataset_dir / "metadata.jsonl").read_text()
    for name in ("000000.mp4", "000007.mp4"):
        np.testing.assert_array_equal(_read(again / "videos" / name), _read(dataset_dir / "videos" / name))
    other = generate_dataset(tmp_path / "other", num_videos=8, seed=4, **SIZE)
    assert (other / "metadata.jsonl").read_text() != (dataset_dir / "metadata.jsonl").read_text()

    stamp = os.stat(again / "videos" / "000003.mp4").st_mtime_ns
    generate_dataset(tmp_path / "again", num_videos=8, seed=3, **SIZE)  # complete: reused, nothing rewritten
    assert os.stat(again / "videos" / "000003.mp4").st_mtime_ns == stamp
    generate_dataset(tmp_path / "again", num_videos=8, seed=3, fps=4, **SIZE)  # different key: regenerated
    assert os.stat(again / "videos" / "000003.mp4").st_mtime_ns != stamp
    assert json.load(open(again / "dataset_info.json"))["fps"] == 4


# ---------------------------------------------------------------- load_video_dataset


def test_items_shapes_and_ranges(dataset_dir):
    ds = load_video_dataset(dataset_dir, num_frames=4, height=16, width=24, frame_stride=2)
    assert len(ds) == 8
    item = ds[0]
    assert item["video"].shape == (3, 4, 16, 24) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1 and item["video"].std() > 0.05
    assert item["text"] == json.loads(open(dataset_dir / "metadata.jsonl").readline())["text"]
    assert isinstance(item["label"], int) and 0 <= item["label"] < 72
    batch = collate_videos([ds[i] for i in range(3)])
    assert batch["video"].shape == (3, 3, 4, 16, 24) and batch["label"].dtype == torch.long
    assert batch["num_skipped"] == 0 and len(batch["text"]) == 3


@pytest.fixture(scope="module")
def counter_dir(tmp_path_factory):
    """12-frame video whose frame t is uniformly grey with value 20 * t, to read frame indices back."""
    root = tmp_path_factory.mktemp("counter")
    grey = (np.arange(12) * 20).astype(np.uint8)
    _write_mp4(root / "counter.mp4", np.broadcast_to(grey[:, None, None, None], (12, 16, 16, 3)).copy())
    rows = [{"file_name": "counter.mp4", "text": "counter"}] * 4
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_temporal_crop_within_bounds_respects_stride_and_is_seeded(counter_dir, stride):
    ds = load_video_dataset(counter_dir, num_frames=4, height=8, width=8, frame_stride=stride, seed=7)
    span = 3 * stride + 1

    def indices(i):
        grey = (ds[i]["video"].mean(dim=(0, 2, 3)) + 1) * 127.5  # (F,)
        return np.round(grey.numpy() / 20).astype(int)

    starts = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            idx = indices(i)
            assert 0 <= idx[0] and idx[-1] <= 11 and idx[-1] - idx[0] == span - 1
            np.testing.assert_array_equal(np.diff(idx), stride)
            assert idx[0] == ds.temporal_start(i, 12)
            starts[epoch, i] = idx[0]
    ds.set_epoch(0)
    assert [indices(i)[0] for i in range(len(ds))] == [starts[0, i] for i in range(len(ds))]  # per (seed, i, epoch)
    assert len(set(starts.values())) > 1  # the crop does move
    centred = load_video_dataset(counter_dir, num_frames=4, height=8, width=8, frame_stride=stride,
                                 random_temporal_crop=False)  # fmt: skip
    assert centred.temporal_start(0, 12) == (12 - span) // 2


def test_bad_files_are_skipped_and_counted(dataset_dir, tmp_path):
    good = _read(dataset_dir / "videos" / "000000.mp4")
    _write_mp4(tmp_path / "good.mp4", good)
    _write_mp4(tmp_path / "short.mp4", good[:3])
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).bytes(2000))
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    names = ["good.mp4", "short.mp4", "corrupt.mp4", "truncated.mp4", "missing.mp4", "good.mp4"]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": n}) + "\n" for n in names))
    ds = load_video_dataset(tmp_path, num_frames=4, height=16, width=16)
    items = [ds[i] for i in range(len(ds))]
    assert [item is None for item in items] == [False, True, True, True, True, False]
    assert "too short" in ds.skipped[1] and all("unreadable" in ds.skipped[i] for i in (2, 3, 4))
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_videos)
    batches = list(loader)
    assert [b["num_skipped"] for b in batches] == [2, 2]
    assert [b["video"].shape[0] for b in batches] == [1, 1] and batches[1]["text"] == ["good.mp4"]
    empty = collate_videos([None, None])
    assert empty["video"].numel() == 0 and empty["num_skipped"] == 2


def test_images_become_still_videos_and_mix_with_videos(dataset_dir, tmp_path):
    rng = np.random.default_rng(0)
    iio.imwrite(tmp_path / "a.png", rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    iio.imwrite(tmp_path / "b.jpg", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    iio.imwrite(tmp_path / "gray.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    _write_mp4(tmp_path / "v.mp4", _read(dataset_dir / "videos" / "000001.mp4"))
    rows = [{"file_name": n, "label": lab} for n, lab in [("a.png", "cat"), ("b.jpg", "dog"), ("gray.png", "cat")]]
    rows.append({"file_name": "v.mp4", "label": "dog"})
    with open(tmp_path / "metadata.csv", "w") as f:  # csv, label only: labels are names -> indices
        f.write("file_name,label\n" + "".join(f"{r['file_name']},{r['label']}\n" for r in rows))
    ds = load_video_dataset(tmp_path, num_frames=4, height=16, width=16, frame_stride=2)
    batch = collate_videos([ds[i] for i in range(4)])
    assert batch["video"].shape == (4, 3, 4, 16, 16) and batch["num_skipped"] == 0
    assert batch["label"].tolist() == [0, 1, 0, 1] and batch["text"] == [""] * 4
    for b in range(3):  # every frame of a still video is the same image
        assert torch.equal(batch["video"][b], batch["video"][b, :, :1].expand(-1, 4, -1, -1))
    assert batch["video"][3, :, 0].ne(batch["video"][3, :, -1]).any()  # the video moves


def test_resize_center_crops_to_aspect_then_area_averages(tmp_path):
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, 16:48] = 200  # a centred square band: exactly the centre crop of a square target
    image[::2, 16:48] = 100
    iio.imwrite(tmp_path / "x.png", image)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "x.png", "text": "x"}) + "\n")
    video = load_video_dataset(tmp_path, num_frames=1, height=16, width=16)[0]["video"]
    # stripes averaged (100 and 200: an exact float32 mean), black sides cropped; / 127.5 - 1 and back: 4 float32
    # roundings at scale 255
    np.testing.assert_allclose((video + 1) * 127.5, 150.0, rtol=0, atol=rounding_atol(255.0, 4))


def test_save_to_disk_dataset(dataset_dir, tmp_path):
    import datasets

    rows = [json.loads(line) for line in open(dataset_dir / "metadata.jsonl")]
    files = [str(dataset_dir / r["file_name"]) for r in rows]
    datasets.Dataset.from_dict({"file_name": files, "text": [r["text"] for r in rows]}).save_to_disk(tmp_path / "d")
    ds = load_video_dataset(tmp_path / "d", num_frames=8, height=32, width=32)
    assert len(ds) == 8 and ds[2]["text"] == rows[2]["text"] and ds[2]["label"] == -1
    expected = torch.from_numpy(_read(files[2])).permute(3, 0, 1, 2).float() / 127.5 - 1
    # same size and all frames: the same decoded bytes through the same float32 division and subtraction
    assert torch.equal(ds[2]["video"], expected)


def test_clear_errors_for_missing_metadata_or_columns(tmp_path):
    with pytest.raises(ValueError, match="metadata.jsonl"):
        load_video_dataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.mp4", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match="add a `text` column"):
        load_video_dataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"path": "a.mp4", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="add `file_name`"):
        load_video_dataset(tmp_path)
