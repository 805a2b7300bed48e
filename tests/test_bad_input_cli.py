"""Bad input and faults at the ``hpdm`` command line and in output writing (issue 23): bad numbers are argparse
errors naming the option; other errors print ``error: <message>`` without a traceback (``--debug`` shows it);
outputs are checked before the run and written atomically, so a failed write exits non-zero and leaves an earlier
file intact, also when the process is killed mid-write."""

import errno
import multiprocessing
import os
import shutil
import signal

import diffusers.utils
import numpy as np
import PIL.Image
import pytest
from test_cli import generate
from test_cli import model_dir as model_dir  # noqa: F401  (the fixture)

from diffusers_hpdm import io_atomic
from diffusers_hpdm.cli import main
from diffusers_hpdm.io_atomic import check_output_path, write_bytes_atomic
from diffusers_hpdm.visualize import save_video

VIDEO = np.linspace(0, 1, 4 * 16 * 16 * 3, dtype=np.float32).reshape(4, 16, 16, 3)

# (argv, the option argparse must name)
BAD_OPTIONS = [
    (["generate", "--fps", "0"], "--fps"),
    (["generate", "--fps", "-5"], "--fps"),
    (["generate", "--fps", "2.5"], "--fps"),
    (["generate", "--guidance", "nan"], "--guidance"),
    (["generate", "--guidance", "3", "inf", "3"], "--guidance"),
    (["generate", "--guidance", "-1"], "--guidance"),
    (["generate", "--context-sigma", "nan"], "--context-sigma"),
    (["generate", "--context-sigma", "0"], "--context-sigma"),
    (["generate", "--steps", "0"], "--steps"),
    (["generate", "--steps", "1e6x"], "--steps"),
    (["generate", "--tile-batch-size", "0"], "--tile-batch-size"),
    (["generate", "--num-levels", "0"], "--num-levels"),
    (["generate", "--height", "-8"], "--height"),
    (["generate", "--seed", "-1"], "--seed"),
    (["make-dataset", "d", "--num-videos", "0"], "--num-videos"),
    (["make-dataset", "d", "--height", "0"], "--height"),
    (["make-dataset", "d", "--width", "13"], "--width"),
    (["make-dataset", "d", "--num-frames", "0"], "--num-frames"),
    (["evaluate", "--num-videos", "0"], "--num-videos"),
    (["evaluate", "--context-sigma", "inf"], "--context-sigma"),
]


@pytest.mark.parametrize("argv, option", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_numbers_are_rejected_while_parsing_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_errors_print_one_line_without_traceback_and_debug_shows_it(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    argv = ["generate", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "v.gif")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert str(exit_info.value.code).startswith("error: --model") and "model_index.json" in str(exit_info.value.code)
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        main(["--debug", *argv])


def test_corrupted_weights_stop_generate_naming_the_file(model_dir, tmp_path):  # noqa: F811
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    weights = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)
    weights.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=r"error: Corrupted weights.*diffusion_pytorch_model\.safetensors"):
        generate(bad, tmp_path / "v.gif")
    assert not (tmp_path / "v.gif").exists()


def test_unusable_output_folders_fail_before_the_model_is_loaded(tmp_path, monkeypatch):
    """A folder that cannot be created (a file is in the way) or written (read-only, simulated: tests run as root)
    fails in check_output_path, naming the option; a model that does not exist is never reached."""
    (tmp_path / "file").write_text("x")
    for command in (["generate", "--out", str(tmp_path / "file" / "v.mp4")], ["evaluate", "--out", str(tmp_path / "file" / "r.json")]):  # fmt: skip
        with pytest.raises(SystemExit, match=r"error: .*--out: cannot create the folder"):
            main([*command, "--model", "does-not-matter"])
    with pytest.raises(SystemExit, match=r"--contact-sheet must end in"):
        main(["generate", "--out", str(tmp_path / "v.gif"), "--contact-sheet", str(tmp_path / "s.txt")])

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io_atomic.tempfile, "mkstemp", read_only)
    with pytest.raises(SystemExit, match=r"error: .*--out: the folder .* is not writable"):
        main(["generate", "--out", str(tmp_path / "v.gif"), "--model", "does-not-matter"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_real_read_only_folder_is_reported(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(OSError, match="not writable"):
        check_output_path(folder / "v.mp4", "--out")


def _disk_full_after(limit: int):
    """An os.write that writes up to ``limit`` bytes in total, then fails with ENOSPC (mid-file)."""
    written = [0]

    def write(fd, data):
        room = limit - written[0]
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, bytes(data[:room]))
        written[0] += n
        return n

    return write


@pytest.mark.parametrize("suffix", [".gif", ".json"])
def test_disk_full_mid_file_raises_and_keeps_the_earlier_file(tmp_path, monkeypatch, suffix):
    target = tmp_path / f"out{suffix}"
    if suffix == ".gif":
        save_video(VIDEO, target)
    else:
        target.write_text('{"old": true}')
    before = target.read_bytes()
    monkeypatch.setattr(io_atomic, "_os_write", _disk_full_after(100))
    with pytest.raises(OSError, match="No space left"):
        if suffix == ".gif":
            save_video(VIDEO[::-1], target)
        else:
            write_bytes_atomic(target, b'{"new": true}' * 100)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary file left


def test_a_still_gif_is_complete_though_its_identical_frames_merge(tmp_path):
    """Pillow merges identical consecutive GIF frames into one of their summed duration; the read-back check counts
    duration, so a still video (an untrained model's output) is written, and lasts as long as its frames."""
    still = np.repeat(VIDEO[:1], 4, axis=0)
    path = save_video(still, tmp_path / "still.gif", fps=8)
    with PIL.Image.open(path) as gif:
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert len(durations) < 4 and sum(durations) == 4 * 120  # 1000 / 8 ms in whole centiseconds


def test_a_truncated_mp4_is_detected_and_the_earlier_file_kept(tmp_path, monkeypatch):
    """The encoder (ffmpeg) 'succeeds' but the disk filled up: the read-back finds fewer frames than written."""
    target = tmp_path / "v.mp4"
    save_video(VIDEO, target)
    before = target.read_bytes()
    real = diffusers.utils.export_to_video

    def truncated(frames, path, fps):  # the real encoder's file, cut in half
        real(frames, path, fps=fps)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])

    monkeypatch.setattr(diffusers.utils, "export_to_video", truncated)
    with pytest.raises(OSError, match="written video"):
        save_video(VIDEO, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_generate_exits_non_zero_on_disk_full_and_keeps_the_old_video(model_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "v.gif"
    assert generate(model_dir, out) == 0
    before = out.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(io_atomic, "_os_write", _disk_full_after(200))
    with pytest.raises(SystemExit, match=r"^error: .*No space left on device"):
        generate(model_dir, out, "--seed", "1")
    assert out.read_bytes() == before and "wrote" not in capsys.readouterr().out


def test_fps_is_checked_by_the_writer_too(tmp_path):
    for fps in (0, -5, float("nan"), "8"):
        with pytest.raises(ValueError, match="fps"):
            save_video(VIDEO, tmp_path / "v.gif", fps=fps)
    with pytest.raises(ValueError, match="video"):
        save_video(VIDEO[0], tmp_path / "v.gif")


def _killed_mid_write(target, ready):
    def write_then_hang(fd, data):
        os.write(fd, bytes(data[: len(data) // 2]))
        ready.set()
        signal.pause()  # SIGKILLed here, half the file written

    io_atomic._os_write = write_then_hang
    write_bytes_atomic(target, b"new content " * 1000)


def test_sigkill_mid_write_leaves_the_earlier_file_intact(tmp_path):
    target = tmp_path / "report.json"
    target.write_bytes(b"old content")
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_killed_mid_write, args=(target, ready))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert target.read_bytes() == b"old content"
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".report.") and leftovers[0].endswith(".tmp.json")
