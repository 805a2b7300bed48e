"""Multi-process training on CPU (gloo): DDP and FSDP2 launches of ``examples/train_t2v.py``, sharded LAMB/EMA, and a
run SIGKILLed mid-checkpoint. Slow (process launches): ``pytest -m slow tests/test_training_slow.py``."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import MICRO  # the same micro model as the fast training tests

from diffusers_hpdm.data import generate_dataset
from diffusers_hpdm.training import TRAINING_STATE_NAME, latest_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_t2v.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _accelerate():
    return [str(Path(sys.executable).parent / "accelerate"), "launch"]


def _train_args(data, out, *extra):
    return [
        "--train_data_dir", str(data), "--video_size", "4", "16", "16", "--model_overrides", json.dumps(MICRO),
        "--output_dir", str(out), "--seed", "0", "--logging_steps", "1", "--validation_prompts",
        "--precompute_text_embeddings", "--checkpoints_total_limit", "10", *extra,
    ]  # fmt: skip


def _run(cmd, log: Path, timeout=600):
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{log.read_text()[-4000:]}"
    return log.read_text()


def _launch(kind, data, out, *extra):
    config = ROOT / "examples" / "configs" / f"{kind}_cpu.yaml"
    cmd = [*_accelerate(), "--config_file", str(config), str(SCRIPT), *_train_args(data, out, *extra)]
    return _run(cmd, out.parent / f"{out.name}.log")


def _single(data, out, *extra):
    return _run([sys.executable, str(SCRIPT), *_train_args(data, out, *extra)], out.parent / f"{out.name}.log")


def _model_weights(checkpoint: Path) -> dict:
    """Raw (non-EMA) weights of an accelerate checkpoint: ``model.safetensors``, or the FSDP2 sharded DCP folder."""
    if (checkpoint / "model.safetensors").exists():
        return load_file(checkpoint / "model.safetensors")
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = checkpoint.parent / f"{checkpoint.name}-model.pt"
    dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", target)
    state = torch.load(target, weights_only=True)
    return state.get("model", state)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("data"), num_videos=8, num_frames=4, height=16, width=16)


@pytest.fixture(scope="module")
def single_reference(data, tmp_path_factory):
    """One process, per-step global batch 2 as 2 accumulated micro-batches of 1 (the 2-process runs' layout)."""
    out = tmp_path_factory.mktemp("single") / "run"
    _single(data, out, "--max_train_steps", "4", "--checkpointing_steps", "2", "--train_batch_size", "1",
            "--gradient_accumulation_steps", "2")  # fmt: skip
    return out


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_cpu_processes_checkpoint_resume_and_match_one_process(kind, data, single_reference, tmp_path):
    # 1. Two processes, 4 steps, checkpoints at 2 and 4
    first = tmp_path / "first"
    log = _launch(kind, data, first, "--max_train_steps", "4", "--checkpointing_steps", "2", "--train_batch_size", "1")
    assert ("DistributedType.FSDP" if kind == "fsdp" else "DistributedType.MULTI_CPU") in log
    assert "[RANK 1]" in log and "Backend: gloo" in log
    assert [p.name for p in sorted(first.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    if kind == "fsdp":
        assert (first / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()  # sharded state dict

    # 2. A new launch resumes from the latest checkpoint of a folder holding checkpoint-2 (+ an interrupted save)
    second = tmp_path / "second"
    shutil.copytree(first / "checkpoint-2", second / "checkpoint-2")
    (second / "checkpoint-3.tmp").mkdir()
    log = _launch(
        kind, data, second, "--max_train_steps", "4", "--checkpointing_steps", "2", "--train_batch_size", "1",
        "--resume_from_checkpoint", "latest",
    )  # fmt: skip
    assert "Resuming from" in log and "checkpoint-2" in log and "first step 3" in log
    assert not (second / "checkpoint-3.tmp").exists()  # the interrupted save was ignored, then removed
    a, b = first / "checkpoint-4", second / "checkpoint-4"
    assert _max_diff(load_file(a / "ema.safetensors"), load_file(b / "ema.safetensors")) == 0.0
    assert _max_diff(_model_weights(a), _model_weights(b)) == 0.0
    assert json.loads((a / TRAINING_STATE_NAME).read_text()) == json.loads((b / TRAINING_STATE_NAME).read_text())

    # 3. Same data and seeds in one process: EMA (every parameter) and raw weights (LAMB with global norms) agree
    ref = single_reference / "checkpoint-4"
    ema, ref_ema = load_file(a / "ema.safetensors"), load_file(ref / "ema.safetensors")
    ema_diff = _max_diff(ema, ref_ema)
    weight_diff = _max_diff(_model_weights(a), _model_weights(ref))
    print(f"{kind}: max |EMA - single-process EMA| = {ema_diff:.3g}, max |weights - single| = {weight_diff:.3g}")
    assert ema_diff <= 1e-6 and weight_diff <= 1e-6
    # The EMA moved on every parameter that trains (fusion.0 is never used with levels_per_block [1, 2]).
    before = load_file(single_reference / "checkpoint-2" / "ema.safetensors")
    unchanged = sorted(k for k in ema if torch.equal(ema[k], before[k]))
    assert unchanged == ["fusion.0.proj.bias", "fusion.0.proj.weight"], unchanged
    final = load_file(first / "transformer" / "diffusion_pytorch_model.safetensors")
    assert _max_diff(final, ema) == 0.0  # the saved pipeline holds the EMA weights


SHARDED_OPTIMIZER_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from pytorch_optimizer import Lamb as ReferenceLamb
    from diffusers_hpdm.training import EMA, Lamb, clip_grad_norm_

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)

    def make():
        torch.manual_seed(0)  # 17 and 3 rows: uneven shards, one of them almost empty
        return torch.nn.Sequential(torch.nn.Linear(8, 17), torch.nn.GELU(), torch.nn.Linear(17, 3))

    def shard(model):
        mesh = init_device_mesh("cpu", (world,))
        fully_shard(model[0], mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def train(model, opt, ema, sharded, steps=5, before_step=lambda: None):
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x = torch.randn(4 * world, 8, generator=g)
            if sharded:
                (model(x[rank * 4 : (rank + 1) * 4]).pow(2).mean() * 40).backward()
            else:  # the same global batch as micro-batches, like the processes
                for r in range(world):
                    (model(x[r * 4 : (r + 1) * 4]).pow(2).mean() * 40 / world).backward()
            clip_grad_norm_(model.parameters(), 1.0)
            before_step()
            opt.step()
            opt.zero_grad()
            if ema is not None:
                ema.update(model)

    ref = make()
    ref_opt, ref_ema = Lamb(ref.parameters()), EMA(ref, half_life=2.0, rampup_ratio=None)
    train(ref, ref_opt, ref_ema, False)

    model = shard(make())
    opt, ema = Lamb(model.parameters()), EMA(model, half_life=2.0, rampup_ratio=None)
    train(model, opt, ema, True)
    full = {n: p.full_tensor() for n, p in model.named_parameters()}
    ema_full, ref_shadow = ema.state_dict()["shadow"], ref_ema.state_dict()["shadow"]
    result = {
        "weights": max((full[n] - p).abs().max().item() for n, p in ref.named_parameters()),
        "ema": max((ema_full[n] - ref_shadow[n]).abs().max().item() for n in ref_ema.names),
        "ema_params": len(ema_full),
        "dtensor": type(next(model.parameters())).__name__,
    }

    # pytorch_optimizer's Lamb cannot step DTensor parameters ...
    try:
        bad = shard(make())
        train(bad, ReferenceLamb(bad.parameters(), lr=5e-3, weight_decay=0.01), None, True, steps=1)
        result["reference_on_dtensors"] = "ran"
    except Exception as error:
        result["reference_on_dtensors"] = type(error).__name__

    # ... and running it on the local shards uses shard norms: visibly different from single-process LAMB.
    local = shard(make())
    with torch.no_grad():
        views = [p.to_local() for p in local.parameters()]  # share storage with the shards

    def copy_grads():
        for v, p in zip(views, local.parameters()):
            v.grad = p.grad.to_local()

    train(local, ReferenceLamb(views, lr=5e-3, weight_decay=0.01), None, True, before_step=copy_grads)
    result["shard_norm_lamb"] = max(
        (p.full_tensor() - q).abs().max().item() for p, q in zip(local.parameters(), ref.parameters())
    )
    if rank == 0:
        json.dump(result, open(sys.argv[1], "w"))
    dist.destroy_process_group()
    """
)


def test_sharded_lamb_and_ema_match_single_process(tmp_path):
    script, result = tmp_path / "sharded.py", tmp_path / "result.json"
    script.write_text(SHARDED_OPTIMIZER_SCRIPT)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    _run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(result)], tmp_path / "log.txt")
    r = json.loads(result.read_text())
    print(r)
    assert r["dtensor"] == "DTensor" and r["ema_params"] == 4
    assert r["weights"] <= 1e-6 and r["ema"] <= 1e-6
    assert r["reference_on_dtensors"] != "ran"  # pytorch_optimizer 4.1 raises on DTensor norms
    assert r["shard_norm_lamb"] > 1e-4  # what "LAMB on local shards" would silently do


def test_sigkill_during_training_resumes_from_last_complete_checkpoint(data, tmp_path):
    """Kill a run (SIGKILL) while it writes a checkpoint; `--resume_from_checkpoint latest` finishes it, and the result
    equals an uninterrupted run."""
    steps = ["--max_train_steps", "8", "--checkpointing_steps", "1", "--train_batch_size", "2"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(SCRIPT), *_train_args(data, killed, *steps)]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        try:
            while time.time() < deadline and proc.poll() is None:
                saving = killed.exists() and any(killed.glob("checkpoint-*.tmp"))
                if saving and latest_checkpoint(killed) is not None:
                    os.kill(proc.pid, signal.SIGKILL)  # a save is in progress
                    break
                time.sleep(0.001)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before a save could be interrupted"
    last = latest_checkpoint(killed)
    incomplete = sorted(p.name for p in killed.glob("checkpoint-*.tmp"))
    print(f"killed with {last.name} complete, {incomplete} incomplete")
    _single(data, killed, *steps, "--resume_from_checkpoint", "latest")
    straight = tmp_path / "straight"
    _single(data, straight, *steps)
    a, b = (
        load_file(killed / "checkpoint-8" / "ema.safetensors"),
        load_file(straight / "checkpoint-8" / "ema.safetensors"),
    )
    assert _max_diff(a, b) == 0.0
    assert not list(killed.glob("checkpoint-*.tmp"))
