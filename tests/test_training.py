"""Training utilities and the example script (fast: CPU, tiny models, single process).

Multi-process runs (DDP / FSDP2 over gloo) are in ``test_training_slow.py``.
"""

import importlib.util
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_close_rounding, log2_length, rounding_atol, transformer_depth
from pytorch_optimizer import Lamb as ReferenceLamb
from safetensors.torch import load_file

from diffusers_hpdm import HPDMScheduler, HPDMTransformer
from diffusers_hpdm.geometry import box_contains, extract_patches
from diffusers_hpdm.models.transformer_hpdm import HPDMTransformerOutput
from diffusers_hpdm.training import (
    EMA,
    TRAINING_STATE_NAME,
    Lamb,
    ShardedBatchSampler,
    atomic_checkpoint,
    clip_grad_norm_,
    hpdm_loss,
    lamb_param_groups,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    remove_incomplete,
    resolve_checkpoint,
    sample_generators,
)

ROOT = Path(__file__).resolve().parents[1]
PATCH, GROWTH, LEVELS = (2, 8, 8), (2, 2, 2), 3
# A model small enough for a few optimizer steps per second on one CPU thread.
MICRO = {
    "patch_size": [2, 8, 8],
    "num_levels": 2,
    "tokenizer_patch": [1, 4, 4],
    "token_dim": 16,
    "latent_dim": 32,
    "num_latents": 8,
    "num_blocks": 2,
    "num_compute_layers": 1,
    "num_heads": 2,
    "levels_per_block": [1, 2],
    "text_embed_dim": 16,
}


# ----------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------


class _Config(dict):
    __getattr__ = dict.__getitem__


class OracleModel(torch.nn.Module):
    """Stands in for the transformer: reads sigma back from ``c_noise``, the clean patches from the boxes, and
    returns the exact v target (or records its inputs)."""

    def __init__(self, scheduler, videos, mode="oracle"):
        super().__init__()
        self.config = _Config(num_levels=LEVELS, patch_size=PATCH, level_growth=GROWTH)
        self.scheduler, self.videos, self.mode, self.calls = scheduler, videos, mode, []

    def forward(
        self, x_in, timestep, boxes, encoder_hidden_states, encoder_attention_mask, class_labels, drop_conditioning
    ):
        self.calls.append(dict(timestep=timestep, boxes=boxes, drop=drop_conditioning, x_in=x_in))
        if self.mode != "oracle":
            return HPDMTransformerOutput(sample=torch.zeros_like(x_in))
        sigma = torch.exp(4 * timestep.double())  # c_noise = log(sigma) / 4
        x0 = extract_patches(self.videos.double(), boxes, PATCH)
        c_in = self.scheduler.broadcast_sigma(self.scheduler.precondition(sigma)[2], x0)
        noise = (x_in.double() / c_in - x0) / self.scheduler.broadcast_sigma(sigma, x0)
        return HPDMTransformerOutput(sample=self.scheduler.training_target(x0, noise, sigma).float())


def _videos(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    f, h, w = (p * g_ ** (LEVELS - 1) for p, g_ in zip(PATCH, GROWTH))
    return torch.rand(batch, 3, f, h, w, generator=g) * 2 - 1


def test_loss_is_zero_when_the_model_outputs_the_exact_v_target():
    scheduler = HPDMScheduler(level_growth=GROWTH)
    videos = _videos(3)
    model = OracleModel(scheduler, videos)
    out = hpdm_loss(model, scheduler, videos, None, None, None, sample_generators(0, 0, range(3)))
    assert out.level_losses.shape == (LEVELS,)
    # What is left is the oracle's rounding. It reads the noise back as (x_in / c_in - x0) / sigma from float32
    # inputs: the noisy sample's rounding (c_in, product, sum) and c_noise's float32 round trip (|ln sigma| eps) at
    # its scale S, and x0's float32 area average (level 0: A = final / patch voxels, |x0| <= 1), over sigma; the
    # target weighs the noise by sd / sqrt(sigma^2 + sd^2). The loss averages the squares: at most the bound squared.
    sigma, sd = out.sigmas.double(), scheduler.config.sigma_data
    noisy = model.calls[0]["x_in"].double().flatten(2).abs().amax(-1) * (sigma**2 + sd**2).sqrt()  # S: max |x_noisy|
    area = videos[0, 0].numel() / math.prod(PATCH)
    per_element = torch.finfo(torch.float32).eps * (noisy * (4 + sigma.log().abs()) + area) / sigma
    per_element = per_element * sd / (sigma**2 + sd**2).sqrt()  # (B, L)
    assert out.loss.item() <= (per_element**2).mean(0).sum().item()
    # ... and a model that outputs zeros pays the target's energy on every level
    zero = hpdm_loss(OracleModel(scheduler, videos, "zeros"), scheduler, videos, None, None, None, torch.Generator())
    assert (zero.level_losses > 0.05).all() and torch.equal(zero.loss, zero.level_losses.sum())  # the same sum


def test_loss_draws_nested_boxes_and_sigmas_shifted_per_level():
    scheduler = HPDMScheduler(level_growth=GROWTH)
    B = 400
    videos = _videos(B)
    model = OracleModel(scheduler, videos, "zeros")
    hpdm_loss(model, scheduler, videos, None, None, None, torch.Generator().manual_seed(0), cond_drop_prob=0.25)
    call = model.calls[0]
    log_sigma = 4 * call["timestep"]  # (B, L)
    shift = math.log(scheduler.noise_shift)  # sqrt(8): all three axes double
    for level in range(1, LEVELS):
        assert abs((log_sigma[:, level] - log_sigma[:, 0]).mean().item() - level * shift) < 0.3
    assert abs(log_sigma[:, 0].mean().item() - scheduler.config.p_mean) < 0.25
    boxes = call["boxes"]
    assert torch.equal(boxes[:, 0], torch.tensor([0.0, 0, 0, 1, 1, 1]).expand(B, 6))
    assert box_contains(boxes[:, :-1], boxes[:, 1:]).all()  # level l inside level l-1
    assert 0.15 < call["drop"].float().mean().item() < 0.35


def test_loss_keeps_the_conditioning_of_high_noise_samples_when_asked():
    scheduler = HPDMScheduler(level_growth=GROWTH, high_noise_fraction=0.5)
    B = 64
    videos = _videos(B)
    runs = {}
    for keep in (None, 10.0):
        model = OracleModel(scheduler, videos, "zeros")
        out = hpdm_loss(
            model, scheduler, videos, None, None, None, sample_generators(1, 0, range(B)),
            cond_drop_prob=0.5, keep_condition_above_sigma=keep,
        )  # fmt: skip
        runs[keep] = out
        assert torch.equal(model.calls[0]["drop"], out.drop_conditioning)
    everywhere, kept = runs[None], runs[10.0]
    assert torch.equal(everywhere.sigmas, kept.sigmas)  # the same draws: only the dropout of high rows changes
    high = everywhere.sigmas[:, 0] > 10
    assert 16 < high.sum() < 48 and everywhere.drop_conditioning[high].any()
    assert not kept.drop_conditioning[high].any()
    assert torch.equal(kept.drop_conditioning[~high], everywhere.drop_conditioning[~high])


def test_loss_randomness_is_per_sample():
    """With one generator per sample, splitting a batch (over processes) draws exactly the same per sample."""
    scheduler = HPDMScheduler(level_growth=GROWTH)
    videos = _videos(4)
    whole_model = OracleModel(scheduler, videos, "zeros")
    whole = hpdm_loss(whole_model, scheduler, videos, None, None, None, sample_generators(3, 5, range(4)))
    halves = []
    for lo in (0, 2):
        model = OracleModel(scheduler, videos[lo : lo + 2], "zeros")
        halves.append(
            hpdm_loss(
                model, scheduler, videos[lo : lo + 2], None, None, None, sample_generators(3, 5, range(lo, lo + 2))
            )
        )
        # The same draws. Only exp (sigma), whose vectorised and scalar paths (other batch sizes) may each be an ulp
        # off, can tell the two apart: 2 eps of sigma, in sigma * noise and in c_in (|c_in sigma noise| <= |x_in| +
        # c_in |x0| <= |x_in| + 2)
        x_in = whole_model.calls[0]["x_in"][lo : lo + 2]
        assert_close_rounding(model.calls[0]["x_in"], x_in, 4, x_in.abs().max() + 2)
    assert_close_rounding(torch.cat([h.sigmas for h in halves]), whole.sigmas, 2, whole.sigmas)  # exp: 2 eps
    # boxes: float64 arithmetic on the same uniforms, correctly rounded elementwise at any batch size: exact
    assert torch.equal(torch.cat([h.boxes for h in halves]), whole.boxes)
    # the loss: squares of targets 2 eps apart (4 eps), batch means grouped otherwise (2 roundings each), halving
    assert_close_rounding((halves[0].loss + halves[1].loss) / 2, whole.loss, 4 + 2 * 2 + 1)


# ----------------------------------------------------------------------------------------------------------------
# LAMB, clipping, EMA
# ----------------------------------------------------------------------------------------------------------------


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))


# Two float32 optimizers that compute the same update in a different order (float64 vs float32 norms, division vs
# reciprocal-multiply, lerp vs mul-add for the first moment, fused vs separate add) differ per step by at most about
# half an ulp of a tensor's largest magnitude per rounding, twice per state on each side: ~2 ulps per step. The
# difference in the parameters feeds into the next gradients; a factor 2 covers that on these small models
# (measured: at most 0.6 eps * steps * max|x| over 8 seeds, 6 and 20 steps, every state). A missing bias correction
# or a misplaced eps changes the result by orders of magnitude more.
OPTIMIZER_ULPS_PER_STEP = 4.0


def _assert_same_trajectory(opt, ref_opt, ours, ref, steps: int) -> None:
    """Parameters, ``exp_avg`` and ``exp_avg_sq`` agree to ``OPTIMIZER_ULPS_PER_STEP * eps * steps * max|ref|``."""
    eps = torch.finfo(torch.float32).eps
    for p, q in zip(ours.parameters(), ref.parameters()):
        for key, a, b in (
            ("param", p, q),
            ("exp_avg", opt.state[p]["exp_avg"], ref_opt.state[q]["exp_avg"]),
            ("exp_avg_sq", opt.state[p]["exp_avg_sq"], ref_opt.state[q]["exp_avg_sq"]),
        ):
            atol = OPTIMIZER_ULPS_PER_STEP * eps * steps * b.abs().max().item()
            torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m, key=key: f"{key}: {m}")


def _train_pair(ours, opt, ref, ref_opt, steps: int) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(5, 8, generator=g)
        for model, o in ((ours, opt), (ref, ref_opt)):
            model(x).pow(2).mean().backward()
            o.step()
            o.zero_grad()


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="decoupled-decay"),
        pytest.param({"weight_decouple": False}, id="coupled-decay"),
        pytest.param({"weight_decay": 0.0}, id="no-decay"),
    ],
)
@pytest.mark.parametrize("steps", [6, 20])
def test_lamb_matches_pytorch_optimizer(kwargs, steps):
    """Trust-ratio groups follow ``pytorch_optimizer.Lamb`` (its foreach path on CPU) up to float32 rounding. With
    ``adam=True`` (formerly ``kwargs2`` here) the update is bias-corrected Adam and is compared with AdamW below."""
    ours, ref = _mlp(), _mlp()
    kwargs = {"weight_decay": 0.01, **kwargs}
    opt, ref_opt = Lamb(ours.parameters(), lr=5e-3, **kwargs), ReferenceLamb(ref.parameters(), lr=5e-3, **kwargs)
    _train_pair(ours, opt, ref, ref_opt, steps)
    _assert_same_trajectory(opt, ref_opt, ours, ref, steps)
    assert opt.param_groups[0]["step"] == steps  # checkpoint layout: group step, two moments per parameter
    assert all(set(opt.state[p]) == {"exp_avg", "exp_avg_sq"} for p in ours.parameters())
    assert not torch.equal(next(ours.parameters()), next(_mlp().parameters()))


@pytest.mark.parametrize(
    "weight_decay, eps",
    [
        pytest.param(0.0, 1e-6, id="adam"),
        pytest.param(0.01, 1e-6, id="adamw"),  # both decay w by (1 - lr * wd) before the step
        pytest.param(0.0, 1e-3, id="eps-on-corrected-sqrt-v"),  # eps ~ sqrt(v_hat): its placement matters
    ],
)
def test_lamb_adam_group_matches_torch_adamw(weight_decay, eps):
    """A group with ``adam=True`` takes AdamW's steps (both bias corrections, eps added to ``sqrt(v_hat)``) over 20
    steps, from the first step on, where the uncorrected update would be 31.6x larger."""
    steps = 20
    ours, ref = _mlp(), _mlp()
    opt = Lamb([{"params": ours.parameters(), "adam": True}], lr=5e-3, weight_decay=weight_decay, eps=eps)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=5e-3, weight_decay=weight_decay, eps=eps)
    _train_pair(ours, opt, ref, ref_opt, steps)
    _assert_same_trajectory(opt, ref_opt, ours, ref, steps)


def test_lamb_zero_weight_falls_back_to_the_adam_step():
    """A zero-initialised matrix in a trust-ratio group has ``||w|| = 0`` at step 1: trust ratio 1 and Adam's step
    (~lr per element), not the uncorrected one (~31.6 lr). (The bias is not zero, so the weight has a gradient; it
    takes a trust-ratio step and is not compared.)"""
    ours, ref = (torch.nn.Linear(8, 3) for _ in range(2))
    for m in (ours, ref):
        torch.nn.init.zeros_(m.weight)
        torch.nn.init.constant_(m.bias, 0.5)
    opt = Lamb(ours.parameters(), lr=5e-3, weight_decay=0.0)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=5e-3, weight_decay=0.0, eps=1e-6)
    _train_pair(ours, opt, ref, ref_opt, 1)
    atol = OPTIMIZER_ULPS_PER_STEP * torch.finfo(torch.float32).eps * ref.weight.abs().max().item()
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=atol)
    assert 0.9 * 5e-3 < ours.weight.abs().max() <= 5e-3 * (1 + 1e-6)


def test_lamb_groups_exempt_biases_norms_and_zero_init_head():
    """Biases, norm gains, embedding tables and the zero-initialised output layers get trust ratio 1 and no decay; every other
    trainable parameter is trust-ratio scaled and decayed; the groups partition the trainable parameters."""
    model = HPDMTransformer.from_preset("tiny-t2v", num_blocks=2, levels_per_block=None)
    model.null_text.requires_grad_(False)
    adapted, plain = lamb_param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert plain["adam"] and plain["weight_decay"] == 0.0 and adapted["weight_decay"] == 0.01
    assert {"proj_out.weight", "out_modulation.weight", "proj_out.bias", "out_modulation.bias"} <= plain_names
    assert {"token_positions", "latents"} <= plain_names  # small-initialised embedding tables
    assert all(p.ndim >= 2 for p in adapted["params"]) and "tokenizer.weight" not in plain_names
    ids = [id(p) for g in (adapted, plain) for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable) and id(model.null_text) not in ids


def test_lamb_groups_let_a_zero_initialised_head_learn():
    """With the trust ratio, a zero-initialised layer takes one Adam step (~lr per element) and then moves by ~lr of
    its own (tiny) norm per step: it barely learns a linear target with weights of scale 0.1 in 100 steps. In the
    exempt group (Adam: ~lr per element per step, up to 0.5 in 100 steps at lr 5e-3) it fits it."""
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    target = x @ (0.1 * torch.randn(16, 8))

    def fit(grouped: bool) -> float:
        head = torch.nn.Linear(16, 8)
        torch.nn.init.zeros_(head.weight)
        head._zero_init_parameters = ["weight"]
        params = lamb_param_groups(head, 0.0) if grouped else head.parameters()
        opt = Lamb(params, lr=5e-3, weight_decay=0.0)
        for _ in range(100):
            opt.zero_grad()
            loss = (head(x) - target).pow(2).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float((head(x) - target).pow(2).mean() / target.pow(2).mean())

    trusted, exempt = fit(False), fit(True)
    assert trusted > 0.5  # relative error after 100 steps (measured 0.90)
    assert exempt < 1e-3  # (measured 3e-5)


def test_clip_grad_norm_matches_torch():
    a, b = _mlp(), _mlp()
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    for m in (a, b):
        (m(x).pow(2).sum() * 50).backward()
    total = clip_grad_norm_(a.parameters(), 1.0)
    ref_total = torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
    assert total.item() > 1.0
    # ours accumulates in float64; torch's float32 norms round the squares, their (cascade) sums over the largest
    # parameter's 128 entries, the root and the norm of the norms, relative to the total; the clipped gradients
    # carry that relative difference through the clip coefficient (one more rounding)
    depth = log2_length(max(p.numel() for p in a.parameters())) + 3
    assert_close_rounding(total.float(), ref_total, depth, ref_total)
    for p, q in zip(a.parameters(), b.parameters()):
        assert_close_rounding(p.grad, q.grad, depth + 1, q.grad.abs())


def test_ema_half_life_every_parameter_and_round_trip(tmp_path):
    model = _mlp()
    model[2].bias.requires_grad_(False)  # frozen parameters are tracked too (their average is themselves)
    ema = EMA(model, half_life=3.0, rampup_ratio=None)
    assert ema.beta(1) == 0.5 ** (1 / 3)  # the same expression
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (step + 1))
        ema.update(model)
        beta = 0.5 ** (1 / 3)
        for n, p in model.named_parameters():
            expected[n] = beta * expected[n] + (1 - beta) * p.detach()
    state = ema.state_dict()
    for n, p in model.named_parameters():
        # lerp against beta * e + (1 - beta) * p: up to 3 float32 roundings a side per step, 4 steps of a convex
        # combination (no growth) at the parameters' scale
        assert_close_rounding(state["shadow"][n], expected[n], 4 * 3, p.abs().max())
    # ramp-up (EDM): a short run's half-life grows with the step count (20 * 0.05 and the power: 2 roundings)
    rampup = EMA(model, half_life=1000, rampup_ratio=0.05)
    assert rampup.beta(20) == pytest.approx(0.5, rel=rounding_atol(1.0, 2, torch.float64))
    # round trip through safetensors; a model with other parameters is refused
    ema.save(tmp_path)
    other = EMA(_mlp())
    other.load(tmp_path)
    assert other.step == 4 and all(torch.equal(other.shadow[n], ema.shadow[n]) for n in ema.names)
    target = _mlp()
    other.copy_to(target)
    assert all(torch.equal(p, ema.shadow[n]) for n, p in target.named_parameters())
    with pytest.raises(ValueError, match="differ"):
        ema.update(torch.nn.Linear(8, 3))


# ----------------------------------------------------------------------------------------------------------------
# Data order and checkpoints
# ----------------------------------------------------------------------------------------------------------------


def test_sharded_sampler_matches_one_process_and_resumes():
    one = ShardedBatchSampler(23, batch_size=4, num_replicas=1, seed=5)
    two = [ShardedBatchSampler(23, batch_size=2, num_replicas=2, rank=r, seed=5) for r in range(2)]
    for epoch in (0, 1):
        one.set_epoch(epoch)
        for s in two:
            s.set_epoch(epoch)
        whole = list(one)
        split = [a + b for a, b in zip(*[list(s) for s in two])]
        assert whole == split and len(whole) == len(one) == 5
    one.set_epoch(0)
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first  # a new order each epoch
    resumed = ShardedBatchSampler(23, batch_size=4, seed=5)
    resumed.load_state_dict({"epoch": 0, "start_batch": 3, "seed": 5})
    assert list(resumed) == first[3:]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardedBatchSampler(3, batch_size=2, num_replicas=2)


def _write_checkpoint(root, step, content=b"x"):
    with atomic_checkpoint(root, step) as tmp:
        (tmp / "weights.bin").write_bytes(content)
        (tmp / TRAINING_STATE_NAME).write_text(json.dumps({"global_step": step}))


def test_atomic_checkpoints_latest_and_pruning(tmp_path):
    for step in (2, 10, 4):
        _write_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-12.tmp").mkdir()  # an interrupted save
    (tmp_path / "checkpoint-11").mkdir()  # a foreign folder without training state
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 10]
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-10"
    assert resolve_checkpoint(tmp_path, "checkpoint-4").name == "checkpoint-4"
    assert resolve_checkpoint(tmp_path, None) is None and resolve_checkpoint(tmp_path / "empty", "latest") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path, "checkpoint-12.tmp")
    assert [p.name for p in prune_checkpoints(tmp_path, 2)] == ["checkpoint-2"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 10]
    assert [p.name for p in remove_incomplete(tmp_path)] == ["checkpoint-12.tmp"]
    _write_checkpoint(tmp_path, 10, b"new")  # re-saving a step replaces it
    assert (tmp_path / "checkpoint-10" / "weights.bin").read_bytes() == b"new"
    with pytest.raises(RuntimeError, match="incomplete"), atomic_checkpoint(tmp_path, 20):
        pass  # no training_state.json: never committed
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"


def _killed_writer(root, ready):
    _write_checkpoint(root, 1)
    with atomic_checkpoint(root, 2) as tmp:
        (tmp / "weights.bin").write_bytes(b"half")
        ready.set()
        signal.pause()  # SIGKILLed here, mid-write


def test_sigkill_while_writing_a_checkpoint_loses_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_killed_writer, args=(tmp_path, ready))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert (tmp_path / "checkpoint-2.tmp" / "weights.bin").exists()
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-1"
    _write_checkpoint(tmp_path, 2)  # the next run redoes the step
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"


# ----------------------------------------------------------------------------------------------------------------
# The example script, in process (single process, CPU)
# ----------------------------------------------------------------------------------------------------------------


def _run(script, data, out, *extra):
    torch.set_num_threads(1)
    args = [
        "--train_data_dir", str(data), "--video_size", "4", "16", "16", "--model_overrides", json.dumps(MICRO),
        "--output_dir", str(out), "--train_batch_size", "2", "--seed", "0", "--logging_steps", "1",
        "--validation_prompts", "--checkpoints_total_limit", "10", *extra,
    ]  # fmt: skip
    script.main(script.parse_args(args))


def test_resume_is_exact(train_script, micro_data, tmp_path):
    """6 steps straight == 3 steps, then a new process state resumed from the checkpoint, then 3 more."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(train_script, micro_data, straight, "--max_train_steps", "6", "--checkpointing_steps", "3")
    _run(
        train_script, micro_data, resumed, "--max_train_steps", "6", "--checkpointing_steps", "3",
        "--resume_from_checkpoint", str(straight / "checkpoint-3"), "--seed", "123",  # the checkpoint's seed wins
        "--validation_prompts", "a purple hexagon",  # new words: the offline text encoder comes from the checkpoint
    )  # fmt: skip
    a, b = straight / "checkpoint-6", resumed / "checkpoint-6"
    for name in ("model.safetensors", "ema.safetensors"):
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    x, y = (torch.load(p / "optimizer.bin", weights_only=False) for p in (a, b))
    assert x["param_groups"][0]["step"] == y["param_groups"][0]["step"] == 6
    for key in x["state"]:
        for s in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(x["state"][key][s], y["state"][key][s])
    assert torch.load(a / "scheduler.bin", weights_only=False) == torch.load(b / "scheduler.bin", weights_only=False)
    sa, sb = (json.loads((p / TRAINING_STATE_NAME).read_text()) for p in (a, b))
    assert sa == sb and sa["seed"] == 0
    # The EMA moved away from the initial weights on every trainable parameter, and the pipeline holds the EMA.
    ema, first = load_file(a / "ema.safetensors"), load_file(straight / "checkpoint-3" / "ema.safetensors")
    assert sum(not torch.equal(ema[k], first[k]) for k in ema) >= len(ema) - 2  # fusion.0 is never used
    final = load_file(straight / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(final[k], ema[k]) for k in ema)
    assert (straight / "README.md").read_text().startswith("---")
    # the final save loads generically, and the card embeds the last validation video (the resumed run has one)
    assert (straight / "hpdm_pipeline.py").is_file() and (resumed / "sample.gif").is_file()
    assert "](sample.gif)" in (resumed / "README.md").read_text()
    assert (a / "text_encoder" / "config.json").is_file() and (resumed / "validation" / "step-6" / "00.mp4").is_file()


def test_corrupted_video_is_skipped_and_counted(train_script, micro_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(micro_data, data)
    (data / "videos" / "000003.mp4").write_bytes(b"not a video at all")
    caplog.set_level(logging.INFO)
    _run(train_script, data, tmp_path / "out", "--max_train_steps", "4", "--checkpointing_steps", "4")
    text = caplog.text
    assert "Skipped 1 unusable item(s) in this batch (1 in total)" in text
    assert "skipped items: 1" in text
    state = json.loads((tmp_path / "out" / "checkpoint-4" / TRAINING_STATE_NAME).read_text())
    assert state["num_skipped"] == 1 and state["global_step"] == 4


def test_low_resolution_base_then_pyramid(train_script, micro_data, tmp_path):
    """--num_levels 1 trains a base on downsampled videos; --pretrained_base grows it and fine-tunes, reusing its text
    encoder, and starts from a model whose level 0 is the base's."""
    from diffusers_hpdm import HierarchicalPatchPipeline

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    _run(
        train_script, micro_data, base, "--num_levels", "1", "--max_train_steps", "2", "--checkpointing_steps", "2",
        "--p_mean", "0.5", "--p_std", "1.4",
    )  # fmt: skip
    base_pipe = HierarchicalPatchPipeline.from_pretrained(base)
    assert base_pipe.transformer.config.num_levels == 1 and base_pipe.transformer.level_sizes == [(2, 8, 8)]
    _run(
        train_script, micro_data, tuned, "--pretrained_base", str(base), "--num_levels", "2",
        "--max_train_steps", "1", "--checkpointing_steps", "1", "--learning_rate", "1e-12", "--p_mean", "-0.7",
    )  # fmt: skip
    pipe = HierarchicalPatchPipeline.from_pretrained(tuned)
    # The fine-tune inherits the base's scheduler, except for what is given explicitly.
    assert (base_pipe.scheduler.config.p_mean, base_pipe.scheduler.config.p_std) == (0.5, 1.4)
    assert (pipe.scheduler.config.p_mean, pipe.scheduler.config.p_std) == (-0.7, 1.4)
    assert pipe.transformer.config.num_levels == 2 and pipe.transformer.levels_per_block == [1, 2]
    for (name, p), q in zip(pipe.text_encoder.named_parameters(), base_pipe.text_encoder.parameters()):
        assert torch.equal(p, q), name
    # One step at a negligible learning rate: level 0 still computes what the base computed.
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 1, 3, 2, 8, 8, generator=g), torch.randn(1, 1, generator=g)
    box = torch.tensor([[[0.0, 0, 0, 1, 1, 1]]])
    cond = dict(encoder_hidden_states=torch.randn(1, 4, 16, generator=g), encoder_attention_mask=torch.ones(1, 4))
    with torch.no_grad():
        a = base_pipe.transformer(x, timestep=t, boxes=box, **cond).sample
        b = pipe.transformer(x, timestep=t, boxes=box, **cond).sample
    # The same shapes and kernels; the weights are the base's (a 1e-12 step is below float32's resolution) through
    # the EMA's lerp, an ulp or two apart: a relative perturbation of 2 eps at each of the model's sublayers.
    assert_close_rounding(b, a, 2 * transformer_depth(MICRO))


def test_demo_recipe_arguments_build_what_they_say(train_script, tmp_path):
    """``examples/train_demo.py``'s stage arguments parse with the training script; the base's model has the layout
    code, both gates and both convolutions, its scheduler the high-noise share, and both fine-tunes inherit that share
    from the base; the third stage builds a shallow 3-level pyramid."""
    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "examples" / "train_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    components = sys.modules["train_t2v_components"]
    base_args = train_script.parse_args([*demo.BASE_ARGS, "--train_data_dir", str(tmp_path)])
    assert base_args.keep_condition_above_sigma == 10 and base_args.num_levels == 1
    overrides = json.loads(base_args.model_overrides)
    model = HPDMTransformer.from_preset(
        base_args.preset, **overrides, text_embed_dim=16, num_levels=1, levels_per_block=None
    )
    assert model.config.text_layout and model.config.text_layout_sigma == 2.0 and model.config.input_gate_sigma == 0.5
    assert model.conv_in is not None and model.conv_out is not None  # the convolutions across token borders
    scheduler = components.build_scheduler(base_args, model)
    assert scheduler.config.high_noise_fraction == 0.5 and scheduler.config.p_mean == -0.4
    scheduler.save_pretrained(tmp_path / "base" / "scheduler")
    tune_args = train_script.parse_args(
        [*demo.FINETUNE_ARGS, "--train_data_dir", str(tmp_path), "--pretrained_base", str(tmp_path / "base")]
    )
    assert tune_args.keep_condition_above_sigma == 10
    assert components.build_scheduler(tune_args, model).config.high_noise_fraction == 0.5
    # Stage 3: the deep pyramid's level 0, expanded into a shallow 3-level pyramid, with the same noise share.
    model.save_pretrained(tmp_path / "base" / "transformer")
    shallow_args = train_script.parse_args(
        [*demo.SHALLOW_FINETUNE_ARGS, "--train_data_dir", str(tmp_path), "--pretrained_base", str(tmp_path / "base")]
    )
    pyramid = components.build_transformer(shallow_args, None, None)
    assert pyramid.config.num_levels == 3 and pyramid.config.context_fusion == "shallow"
    assert components.build_scheduler(shallow_args, pyramid).config.high_noise_fraction == 0.5


def test_fine_tune_scheduler_takes_explicit_noise_options(train_script, tmp_path):
    """A fine-tune inherits the base's scheduler, and a noise option given on the command line replaces the base's
    value, also one the base's saved config does not have (a newer option)."""
    components = sys.modules["train_t2v_components"]
    base = HPDMScheduler(p_mean=-0.4, high_noise_fraction=0.5)
    base.save_pretrained(tmp_path / "base" / "scheduler")
    config_file = tmp_path / "base" / "scheduler" / "scheduler_config.json"
    saved = json.loads(config_file.read_text())
    saved.pop("clean_context_fraction")  # as written before the option existed
    config_file.write_text(json.dumps(saved))
    model = HPDMTransformer.from_preset("tiny", text_embed_dim=16)
    argv = ["--train_data_dir", str(tmp_path), "--pretrained_base", str(tmp_path / "base")]
    inherited = components.build_scheduler(train_script.parse_args(argv), model)
    assert inherited.config.p_mean == -0.4 and inherited.config.clean_context_fraction == 0.0
    argv += ["--clean_context_fraction", "0.5", "--high_noise_fraction", "0.25"]
    tuned = components.build_scheduler(train_script.parse_args(argv), model)
    assert tuned.config.clean_context_fraction == 0.5 and tuned.config.high_noise_fraction == 0.25
    assert tuned.config.p_mean == -0.4
    with pytest.raises(ValueError, match="clean_context"):
        components.build_scheduler(train_script.parse_args([*argv, "--clean_context_fraction", "2"]), model)


def test_pretrained_base_with_model_overrides_converts_fusion(train_script, tmp_path):
    """``--pretrained_base`` with ``--model_overrides '{"context_fusion": "shallow"}'`` expands a deep base into a
    shallow pyramid (from_base's conversion); overrides equal to the base's config are no change, so the same
    overrides the base was trained with keep it as it is at its own level count."""
    components = sys.modules["train_t2v_components"]
    config = dict(patch_size=(2, 8, 8), num_levels=1, token_dim=16, latent_dim=32, num_latents=4, num_blocks=2)
    base = HPDMTransformer(**config, num_compute_layers=1, num_heads=2)
    base.save_pretrained(tmp_path / "base" / "transformer")

    def build(*extra):
        args = train_script.parse_args(
            ["--train_data_dir", str(tmp_path), "--pretrained_base", str(tmp_path / "base"), *extra]
        )
        return components.build_transformer(args, None, None)

    shallow = build("--num_levels", "2", "--model_overrides", json.dumps({"context_fusion": "shallow"}))
    assert shallow.config.context_fusion == "shallow" and shallow.config.num_levels == 2
    assert shallow.tokenizer.weight.shape[1] == 2 * 3 * 16 + 3  # pixels, context pixels (zero), coordinates
    same = build("--model_overrides", json.dumps({"num_blocks": 2, "patch_size": [2, 8, 8]}))
    assert same.config.num_levels == 1 and same.config.context_fusion == "deep"
