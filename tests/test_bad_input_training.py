"""Bad data and faults in training (issue 23): metadata errors name the file, line and column; a dataset with no
usable item stops the run; a resume that cannot restore every piece of state says which; the checkpoint commit
keeps a complete copy of every step when killed at any of its file-system operations."""

import json
import multiprocessing
import os
import shutil
import signal
import zipfile
from pathlib import Path

import pytest
from test_training import _run

from diffusers_hpdm.data import generate_dataset, load_video_dataset
from diffusers_hpdm.training import (
    TRAINING_STATE_NAME,
    NoUsableDataError,
    SkipMonitor,
    atomic_checkpoint,
    check_checkpoint,
    list_checkpoints,
    read_training_state,
    remove_incomplete,
)

ROW = {"file_name": "videos/000000.mp4", "text": "a red circle moving left", "label": 0}


def _folder(tmp_path, micro_data, lines: list[str], name="metadata.jsonl"):  # noqa: F811
    folder = tmp_path / "data"
    shutil.copytree(micro_data / "videos", folder / "videos")
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder


BAD_METADATA = [
    ([json.dumps(ROW), '{"file_name": "videos/000001.mp4", "text": "a'], r"line 2 is not valid JSON"),
    ([json.dumps({k: v for k, v in ROW.items() if k != "text"}), json.dumps(ROW)], r"line 1: `text` is missing"),
    ([json.dumps(ROW), json.dumps({**ROW, "text": None})], r"line 2: `text` is missing"),
    ([json.dumps(ROW), json.dumps({**ROW, "text": ""})], r"line 2: `text` is ''"),
    ([json.dumps(ROW), json.dumps({**ROW, "text": 5})], r"line 2: `text` is 5"),
    ([json.dumps(ROW), json.dumps({**ROW, "file_name": ""})], r"line 2: `file_name` is ''"),
    ([json.dumps(ROW), "[1, 2]"], r"line 2 must be a JSON object"),
    (["", "   "], r"has no rows"),
]


@pytest.mark.parametrize("lines, message", BAD_METADATA, ids=[m for _, m in BAD_METADATA])
def test_bad_metadata_names_the_file_and_line(tmp_path, micro_data, lines, message):  # noqa: F811
    folder = _folder(tmp_path, micro_data, lines)
    with pytest.raises(ValueError, match=rf"metadata\.jsonl.*{message}"):
        load_video_dataset(folder, num_frames=4, height=16, width=16)


def test_csv_metadata_with_an_empty_caption_cell_names_the_line(tmp_path, micro_data):  # noqa: F811
    lines = ["file_name,text", "videos/000000.mp4,a red circle", "videos/000001.mp4,"]
    folder = _folder(tmp_path, micro_data, lines, "metadata.csv")
    with pytest.raises(ValueError, match=r"metadata\.csv line 3: `text` is ''"):
        load_video_dataset(folder, num_frames=4, height=16, width=16)


def test_class_conditional_data_needs_no_captions_and_every_row_keeps_every_column(tmp_path, micro_data):  # noqa: F811
    lines = [json.dumps({"file_name": "videos/000000.mp4", "label": 1}), json.dumps({**ROW, "label": 2})]
    folder = _folder(tmp_path, micro_data, lines)
    ds = load_video_dataset(folder, num_frames=4, height=16, width=16, require_captions=False)
    assert ds.records.column_names == ["file_name", "label", "text"] and ds.records[1]["text"] == ROW["text"]


@pytest.mark.parametrize(
    "kwargs, name",
    [({"num_videos": 0}, "num_videos"), ({"height": 0}, "height"), ({"width": 15}, "width"), ({"fps": 0}, "fps")],
)
def test_generate_dataset_rejects_empty_or_impossible_sizes(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        generate_dataset(tmp_path / "d", **{"num_videos": 2, **kwargs})


def test_skip_monitor_stops_on_no_usable_item_and_reports_a_high_ratio(caplog):
    monitor = SkipMonitor(100, warn_ratio=0.25, patience=50, reasons={3: "unreadable (x)"})
    monitor.update(used=6, skipped=2)
    caplog.set_level("WARNING")
    monitor.end_epoch(0)  # 25%: not above the threshold
    assert not caplog.records
    monitor.update(used=2, skipped=6)
    monitor.end_epoch(1)
    assert "Epoch 1 skipped 6 of 8 items (75%)" in caplog.text and monitor.ratio == 0.5
    monitor.update(used=0, skipped=4)
    with pytest.raises(NoUsableDataError, match=r"all 4 items read in epoch 2 were skipped.*item 3: unreadable"):
        monitor.end_epoch(2)
    fresh = SkipMonitor(10**6, patience=50)
    with pytest.raises(ValueError, match="since the start of the run"):
        for _ in range(100):  # a huge unreadable dataset stops without waiting for its epoch to end
            fresh.update(used=0, skipped=2)


def test_training_on_a_folder_of_unreadable_videos_stops_with_a_clear_error(train_script, micro_data, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(micro_data, data)
    for video in (data / "videos").iterdir():
        video.write_bytes(b"not a video")
    with pytest.raises(NoUsableDataError, match=r"all 8 items read in epoch 0 were skipped.*--train_data_dir"):
        _run(train_script, data, tmp_path / "out", "--max_train_steps", "3", "--checkpointing_steps", "3")


# ------------------------------------------------------------------------------------------------------------------
# Resume: every piece of state, or an error naming the missing one


@pytest.fixture(scope="module")
def checkpoint(train_script, micro_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("run")
    _run(train_script, micro_data, out, "--max_train_steps", "2", "--checkpointing_steps", "2")
    return out / "checkpoint-2"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BROKEN_PIECES = [
    (lambda c: (c / TRAINING_STATE_NAME).write_text('{"global_step": 2}'), r"`seed` is missing"),
    (lambda c: (c / TRAINING_STATE_NAME).write_text("{broken"), r"training_state\.json is not valid JSON"),
    (
        lambda c: (c / TRAINING_STATE_NAME).write_text(
            json.dumps({"global_step": 2, "num_skipped": 0, "seed": 0, "data_order": {"epoch": 0, "seed": 0}})
        ),
        r"data_order\.start_batch",
    ),
    (lambda c: (c / TRAINING_STATE_NAME).write_text(json.dumps([1])), r"must hold a JSON object"),
    (lambda c: _truncate(c / "model.safetensors"), r"weights: model\.safetensors is truncated"),
    (lambda c: (c / "model.safetensors").unlink(), r"weights: no model\.safetensors"),
    (lambda c: _truncate(c / "optimizer.bin"), r"optimizer: optimizer\.bin is unreadable"),
    (lambda c: (c / "scheduler.bin").unlink(), r"lr schedule: no scheduler\.bin"),
    (lambda c: _truncate(c / "ema.safetensors"), r"EMA: ema\.safetensors is truncated"),
    (lambda c: (c / "random_states_0.pkl").write_bytes(b"garbage"), r"RNG: random_states_0\.pkl cannot be loaded"),
    (lambda c: (c / "random_states_0.pkl").unlink(), r"RNG: random_states_0\.pkl is missing"),
]


@pytest.mark.parametrize("breaks, message", BROKEN_PIECES, ids=[m for _, m in BROKEN_PIECES])
def test_a_checkpoint_that_cannot_restore_a_piece_of_state_names_it(checkpoint, tmp_path, breaks, message):
    broken = tmp_path / "checkpoint-2"
    shutil.copytree(checkpoint, broken)
    breaks(broken)
    with pytest.raises(ValueError, match=rf"Cannot resume exactly from .*{message}"):
        check_checkpoint(broken)


def test_an_intact_checkpoint_passes_and_a_second_process_needs_its_own_rng(checkpoint):
    assert check_checkpoint(checkpoint) == read_training_state(checkpoint)
    with pytest.raises(ValueError, match=r"RNG: random_states_1\.pkl is missing"):
        check_checkpoint(checkpoint, num_processes=2)


def test_training_refuses_an_inexact_resume(train_script, micro_data, checkpoint, tmp_path):  # noqa: F811
    """Accelerate would log 'Could not load random states' at INFO and continue; the script stops instead."""
    out = tmp_path / "out"
    shutil.copytree(checkpoint, out / "checkpoint-2")
    (out / "checkpoint-2" / "random_states_0.pkl").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"RNG: random_states_0\.pkl cannot be loaded"):
        _run(train_script, micro_data, out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")


# ------------------------------------------------------------------------------------------------------------------
# The checkpoint commit, killed at each of its file-system operations

OPS = ("replace", "rmdir", "unlink", "fsync")


def _save(root, step, version):
    with atomic_checkpoint(root, step) as tmp:
        (tmp / "weights.bin").write_text(version)
        (tmp / "extra.bin").write_text(version * 3)
        (tmp / TRAINING_STATE_NAME).write_text(json.dumps({"global_step": step, "version": version}))


def _interrupted_saves(root, kill_at, ready, counter):
    """Re-save step 1 (v1 -> v2), then save step 2 (new) and prune to one checkpoint, pausing (to be SIGKILLed)
    before file-system operation number ``kill_at``; ``kill_at = -1`` counts them into ``counter``."""
    _save(root, 1, "v1")
    calls = [0]

    def hooked(fn):
        def op(*args, **kwargs):
            if calls[0] == kill_at:
                ready.set()
                signal.pause()
            calls[0] += 1
            counter.value = calls[0]
            return fn(*args, **kwargs)

        return op

    for name in OPS:
        setattr(os, name, hooked(getattr(os, name)))
    from diffusers_hpdm.training import prune_checkpoints

    _save(root, 1, "v2")
    _save(root, 2, "v3")
    prune_checkpoints(root, 1)
    ready.set()


def _complete(path: Path) -> str:
    """The version a checkpoint holds; asserts every file is there and of that version."""
    version = json.loads((path / TRAINING_STATE_NAME).read_text())["version"]
    assert (path / "weights.bin").read_text() == version and (path / "extra.bin").read_text() == version * 3
    return version


def test_killing_the_checkpoint_commit_at_every_operation_keeps_a_complete_copy_of_every_step(tmp_path):
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("i", 0)
    dry = ctx.Process(target=_interrupted_saves, args=(tmp_path / "dry", -1, ctx.Event(), counter))
    dry.start()
    dry.join()
    total = counter.value
    assert dry.exitcode == 0 and total >= 20, total  # fsyncs, the renames, the deletions of old copies
    seen = set()
    for kill_at in range(total):
        root = tmp_path / f"kill-{kill_at}"
        ready = ctx.Event()
        proc = ctx.Process(target=_interrupted_saves, args=(root, kill_at, ready, ctx.Value("i", 0)))
        proc.start()
        assert ready.wait(60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        listed = dict(list_checkpoints(root))
        # Step 1 was committed before any kill point: a complete copy (old or new) is listed at every instant.
        assert 1 in listed or 2 in listed, (kill_at, sorted(p.name for p in root.iterdir()))
        versions = {step: _complete(path) for step, path in listed.items()}
        assert versions.get(1, "v2") in ("v1", "v2") and versions.get(2, "v3") == "v3"
        if 1 not in listed:  # only after step 2 is committed may pruning remove step 1
            assert versions[2] == "v3"
        remove_incomplete(root)  # the next run's clean-up: renames an orphaned old copy back, deletes the rest
        after = dict(list_checkpoints(root))
        assert {s: _complete(p) for s, p in after.items()} == versions, kill_at
        assert all(p.name.startswith("checkpoint-") and ".tmp" not in p.name for p in root.iterdir())
        seen.add(tuple(sorted(versions.items())))
    # The kills caught every state the saves pass through, including step 1 under its .old name (v1) mid re-save.
    assert ((1, "v1"),) in seen and ((1, "v2"),) in seen and ((1, "v2"), (2, "v3")) in seen and ((2, "v3"),) in seen


def test_corrupt_torch_files_are_reported_by_crc(tmp_path, checkpoint):
    broken = tmp_path / "checkpoint-2"
    shutil.copytree(checkpoint, broken)
    data = bytearray((broken / "scheduler.bin").read_bytes())
    with zipfile.ZipFile(broken / "scheduler.bin") as archive:  # a torch.save archive: records stored uncompressed
        first = archive.infolist()[0]
    header = first.header_offset  # local header: 30 bytes, then the name and the (alignment) extra field
    name_len, extra_len = (int.from_bytes(data[header + k : header + k + 2], "little") for k in (26, 28))
    start = header + 30 + name_len + extra_len + first.file_size // 2  # inside the first record's bytes
    data[start : start + 4] = bytes(b ^ 0xFF for b in data[start : start + 4])
    (broken / "scheduler.bin").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"lr schedule: scheduler\.bin is (corrupted|unreadable)"):
        check_checkpoint(broken)
