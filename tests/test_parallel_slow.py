"""Sampling over several CPU processes (gloo): 1, 2 and 3 processes give the same frames, for every tile batch size,
with guidance, shifted tiles, an offloaded or uncached context, several prompts split by tiles or by whole videos;
and ``accelerate launch ... -m diffusers_hpdm.cli generate`` writes the video ``hpdm generate`` writes. Slow
(process launches): ``pytest -m slow tests/test_parallel_slow.py``."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import assert_close_rounding, transformer_depth
from parallel_worker import CASES
from test_pipeline import PROMPTS, pipe_factory

from diffusers_hpdm.geometry import tile_plan

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("parallel_worker.py")
ENV = {
    **os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
}  # fmt: skip
BIN = Path(sys.executable).parent


def free_port() -> str:
    """A port nobody listens on (torchrun's ``--master_port 0`` gives each worker its own port and they never meet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(cmd, log: Path, timeout=900) -> str:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{log.read_text()[-4000:]}"
    return log.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case of ``parallel_worker.CASES`` with 1, 2 and 3 processes: ``{n: [per-rank results]}``."""
    tmp = tmp_path_factory.mktemp("parallel")
    out = {}
    for n in (1, 2, 3):
        cmd = [sys.executable, str(WORKER), str(tmp / "r1")]
        if n > 1:
            cmd = [
                str(BIN / "torchrun"),
                "--nproc_per_node",
                str(n),
                "--master_port",
                free_port(),
                str(WORKER),
                str(tmp / f"r{n}"),
            ]
        _run(cmd, tmp / f"r{n}.log")
        out[n] = [torch.load(tmp / f"r{n}.rank{r}.pt") for r in range(n)]
    return out


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_processes_give_the_frames_of_one_process(runs, n, case):
    """fp32 frames in [0, 1] before encoding: within 1e-6 of one process on every process (the shares' partial
    weighted sums are added in another order; the videos split makes other batch shapes); every process holds the
    same output, and the finished levels agree within the rounding of the steps that made them."""
    ref = runs[1][0]["results"]
    depth = transformer_depth(pipe_factory().transformer.config) * 3 * 3  # layers x level-0 Heun evaluations x levels
    for rank, got in enumerate(runs[n]):
        err = (got["results"][case] - ref[case]).abs().max().item()
        assert err <= 1e-6, f"{n} processes, rank {rank}, {case}: max |frames - one process| = {err:.3g}"
        torch.testing.assert_close(got["results"][case], runs[n][0]["results"][case], rtol=0, atol=0)
        for a, b in zip(got["results"].get(case + "_levels", []), ref.get(case + "_levels", [])):
            assert_close_rounding(a, b, depth, scale=1.0)


@pytest.mark.parametrize("n", [2, 3])
def test_each_process_denoises_its_share_and_the_shares_cover_the_level(runs, n):
    """Per level > 0, the processes' tile counts are accelerate's split (the first ones take one more) and add up to
    the level's (video, tile) pairs; one all-reduce of the canvas per evaluation; the context is exchanged at level 1
    (the finest level leaves no context); whole videos when there are as many as processes."""
    tiles = [len(tile_plan(s, (2, 8, 8))) for s in [(2, 8, 8), (2, 16, 16), (2, 32, 32)]]  # 1, 9, 49
    for case, kw in CASES.items():
        stats = [r["stats"][case] for r in runs[n]]
        videos = (len(PROMPTS) if "prompt" in kw else 1) * kw.get("num_videos_per_prompt", 1)
        if videos >= n and kw.get("parallel") != "tiles":
            assert [s[-1]["tiles"] for s in stats] == [len(range(r, videos, n)) for r in range(n)]
            continue
        for level in (1, 2):
            total = videos * tiles[level]
            counts = [s[level]["tiles"] for s in stats]
            assert sum(counts) == total and max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
            canvas_bytes = videos * 3 * 2 * (8 * 2**level) ** 2 * 4
            assert all(s[level]["reduce_bytes"] == s[level]["evaluations"] * canvas_bytes for s in stats)
        sent = [s[1]["context_bytes"] for s in stats]
        assert (sum(sent) > 0) == (kw.get("cache_context", True)), case
        assert all(s[2]["context_bytes"] == 0 for s in stats)


def test_accelerate_launch_of_the_cli_writes_the_video_of_hpdm_generate(tmp_path):
    """``accelerate launch --config_file examples/configs/ddp_cpu.yaml -m diffusers_hpdm.cli generate`` (2
    processes, tiles split) and with two prompts (whole videos split) write the videos of one process; each
    process logs its share once per level; only the main process writes."""
    from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer  # noqa: F401

    model = tmp_path / "model"
    pipe_factory().save_pretrained(model)
    args = ["--model", str(model), "--steps", "3", "--seed", "4", "--tile-batch-size", "4"]
    launch = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "examples/configs/ddp_cpu.yaml"), "-m"]
    for prompts, name in (([PROMPTS[0]], "one"), (PROMPTS, "two")):
        _run([sys.executable, "-m", "diffusers_hpdm.cli", "generate", *prompts, *args, "--out", str(tmp_path / f"{name}.gif")], tmp_path / f"{name}.log")  # fmt: skip
        log = _run([*launch, "diffusers_hpdm.cli", "generate", *prompts, *args, "--out", str(tmp_path / f"{name}_2p.gif")], tmp_path / f"{name}_2p.log")  # fmt: skip
        assert log.count("wrote ") == len(prompts), log  # the main process alone
        if name == "one":
            assert "process 1/2: 5 of 9 tiles at level 1" in log and "process 2/2: 4 of 9 tiles at level 1" in log
            assert "process 1/2: 25 of 49 tiles at level 2" in log and "process 2/2: 24 of 49 tiles at level 2" in log
            pairs = [("one.gif", "one_2p.gif")]
        else:
            assert "process 1/2: videos 0..0 of 2" in log and "process 2/2: videos 1..1 of 2" in log
            pairs = [(f"two_{i}.gif", f"two_2p_{i}.gif") for i in range(2)]
        for a, b in pairs:
            fa, fb = iio.imread(tmp_path / a, index=None), iio.imread(tmp_path / b, index=None)
            # frames within 1e-6 before encoding: equal after quantising to 8 bits, unless a value lies within 1e-6
            # of a rounding boundary (then one level apart)
            assert fa.shape == fb.shape and np.abs(fa.astype(int) - fb.astype(int)).max() <= 1
            assert (fa != fb).mean() < 1e-3
