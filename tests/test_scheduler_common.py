"""The invariants diffusers' ``SchedulerCommonTest`` (tests/schedulers/test_schedulers.py) checks, written for
``HPDMScheduler``, plus diffusers' EDM conventions: timesteps after construction, ``add_noise`` taking timesteps as
``EDMEulerScheduler`` does, and ``compatibles`` that really share the denoiser."""

import pytest
import torch
from conftest import assert_close_rounding
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from diffusers_hpdm import HPDMScheduler

SHAPES = [(2, 3, 4, 8, 8), (1, 3, 2, 4, 6)]  # (B, C, F, H, W) canvases


def sample(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------- construction and timesteps
def test_timesteps_exist_after_construction_and_equal_set_timesteps_num_train_timesteps():
    fresh = HPDMScheduler(num_train_timesteps=50)
    assert fresh.step_index is None and fresh.begin_index is None
    assert len(fresh.timesteps) == 2 * 50 - 1  # Heun at level 0: two evaluations per interval but the last
    assert fresh.init_noise_sigma == fresh.sigmas[0].item() == 80.0
    assert fresh.sigmas[-2].item() == pytest.approx(0.002, rel=1e-12) and fresh.sigmas[-1] == 0
    again = HPDMScheduler(num_train_timesteps=50)
    again.set_timesteps(7, level=2)
    again.set_timesteps(50)
    assert torch.equal(again.timesteps, fresh.timesteps) and torch.equal(again.sigmas, fresh.sigmas)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        HPDMScheduler(num_train_timesteps=0)


# ------------------------------------------------------------------------------------------------- add_noise
def test_add_noise_at_the_first_timestep_adds_sigma_max_noise():
    """The issue's case: ``add_noise(x0, noise, scheduler.timesteps[0])`` is ``x0 + 80 * noise``, not ``1.1``."""
    scheduler = HPDMScheduler()
    x0, noise = sample((4, 3, 4, 8, 8), 1), sample((4, 3, 4, 8, 8), 2)
    noisy = scheduler.add_noise(x0, noise, scheduler.timesteps[0])
    assert torch.equal(noisy, scheduler.add_noise_at_sigmas(x0, noise, torch.tensor(80.0)))
    assert 75 < (noisy - x0).std().item() < 85


@pytest.mark.parametrize("level", [0, 1])
def test_add_noise_of_timesteps_is_add_noise_at_their_sigmas(level):
    """Per-sample ``(B,)`` and per-level ``(B, L)`` timesteps map to the sigma each one evaluates (bit for bit)."""
    scheduler = HPDMScheduler(s_churn=4.0)  # churned sigma_hat: timesteps that are not on the plain grid
    scheduler.set_timesteps(6, level=level)
    sigmas = torch.tensor(scheduler._eval_sigmas, dtype=torch.float64)
    idx = torch.tensor([0, len(sigmas) // 2, len(sigmas) - 1])
    x0, noise = sample((3, 3, 2, 4, 4)), sample((3, 3, 2, 4, 4), 1)
    out = scheduler.add_noise(x0, noise, scheduler.timesteps[idx])
    assert torch.equal(out, scheduler.add_noise_at_sigmas(x0, noise, sigmas[idx]))
    x0_l, noise_l = sample((3, 2, 3, 2, 4, 4)), sample((3, 2, 3, 2, 4, 4), 1)
    grid = idx.reshape(3, 1).expand(3, 2)  # (B, L)
    out_l = scheduler.add_noise(x0_l, noise_l, scheduler.timesteps[grid])
    assert torch.equal(out_l, scheduler.add_noise_at_sigmas(x0_l, noise_l, sigmas[grid]))


def test_add_noise_matches_diffusers_edm_euler_on_the_same_schedule():
    n = 12
    ours, ref = HPDMScheduler(level_samplers=["euler"]), EDMEulerScheduler(prediction_type="v_prediction")
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    x0, noise = sample((n, 3, 2, 4, 4)), sample((n, 3, 2, 4, 4), 1)
    a = ours.add_noise(x0, noise, ours.timesteps)  # sample i at evaluation i
    b = ref.add_noise(x0, noise, ref.timesteps)
    # diffusers' float32 Karras grid: rho = 7 roundings of its base relative to sigma, at noise scale sigma |eps|
    assert_close_rounding(a, b, 7 + 2, (80 * noise.abs()).max())


def test_add_noise_after_set_begin_index_uses_the_begin_or_current_evaluation():
    """As ``EDMEulerScheduler``: with a begin index, the sigma comes from the position in the loop (img2img)."""
    scheduler = HPDMScheduler()
    scheduler.set_timesteps(5)
    scheduler.set_begin_index(4)
    x0, noise = sample((2, 3, 2, 4, 4)), sample((2, 3, 2, 4, 4), 1)
    expected = scheduler.add_noise_at_sigmas(x0, noise, torch.tensor(scheduler._eval_sigmas[4]).expand(2))
    assert torch.equal(scheduler.add_noise(x0, noise, scheduler.timesteps[[0, 1]]), expected)


def test_add_noise_of_a_timestep_outside_the_schedule_names_the_sigma_form():
    scheduler = HPDMScheduler()
    with pytest.raises(ValueError, match="add_noise_at_sigmas"):
        scheduler.add_noise(torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([0.123]))


def test_add_noise_keeps_dtype_and_device():
    scheduler = HPDMScheduler()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x0 = sample((2, 3, 2, 4, 4)).to(dtype)
        out = scheduler.add_noise(x0, torch.ones_like(x0), scheduler.timesteps[[1, 2]])
        assert out.dtype == dtype and out.device == x0.device and out.shape == x0.shape


# ------------------------------------------------------------------------------------------------ step contract
@pytest.mark.parametrize("shape", SHAPES)
def test_step_shapes_and_dict_tuple_equivalence(shape):
    """SchedulerCommonTest.test_step_shape / test_scheduler_outputs_equivalence, at two timesteps of one loop."""
    a, b = HPDMScheduler(), HPDMScheduler()
    a.set_timesteps(4)
    b.set_timesteps(4)
    x = sample(shape) * a.init_noise_sigma
    for t in a.timesteps[:3]:
        model_output = 0.1 * a.scale_model_input(x, t)
        assert a.scale_model_input(x, t).shape == shape
        out = a.step(model_output, t, x)
        prev, x0 = b.step(model_output, t, x, return_dict=False)
        assert out.prev_sample.shape == out.pred_original_sample.shape == shape
        assert torch.equal(out.prev_sample, prev) and torch.equal(out.pred_original_sample, x0)
        x = prev


def test_from_save_pretrained_gives_the_same_steps(tmp_path):
    """SchedulerCommonTest.test_from_save_pretrained: a loop after a save/load round trip is bit-identical."""
    scheduler = HPDMScheduler(level_growth=(1, 2, 2), s_churn=3.0, num_train_timesteps=30, rho=6.0)
    scheduler.save_pretrained(tmp_path)
    loaded = HPDMScheduler.from_pretrained(tmp_path)
    assert torch.equal(loaded.timesteps, scheduler.timesteps)  # the construction schedule too
    outputs = []
    for s in (scheduler, loaded):
        s.set_timesteps(5, level=1)
        x = sample((1, 3, 2, 4, 4)) * s.init_noise_sigma
        for t in s.timesteps:
            x = s.churn(x, generator=torch.Generator().manual_seed(int(s.step_index or 0)))
            x = s.step(0.2 * s.scale_model_input(x, t), t, x).prev_sample
        outputs.append(x)
    assert torch.equal(*outputs)


# ---------------------------------------------------------------------------------------------------- compatibles
def test_compatibles_list_this_class_and_diffusers_edm_schedulers():
    compatibles = HPDMScheduler().compatibles
    assert compatibles[0] is HPDMScheduler
    assert {EDMEulerScheduler, EDMDPMSolverMultistepScheduler} <= set(compatibles)


@pytest.mark.parametrize("cls", [EDMEulerScheduler, EDMDPMSolverMultistepScheduler])
def test_compatible_schedulers_share_the_denoiser(cls):
    """``cls.from_config(ours.config)`` keeps the grid parameters and computes our ``c_in``, ``c_noise`` and
    denoised estimate ``D(x; sigma)`` for the same transformer output (v-prediction)."""
    ours = HPDMScheduler(sigma_min=0.004, sigma_max=60.0, sigma_data=0.6, rho=6.0)
    other = cls.from_config(ours.config)
    for key in ("sigma_min", "sigma_max", "sigma_data", "rho", "prediction_type", "num_train_timesteps"):
        assert other.config[key] == ours.config[key], key
    x, model_output = sample((2, 3, 2, 4, 4)) * 5, sample((2, 3, 2, 4, 4), 1)
    for sigma in (0.01, 1.0, 50.0):
        s = torch.tensor(sigma)
        assert_close_rounding(other.precondition_inputs(x, s), ours.precondition_inputs(x, sigma), 3, x.abs().max())
        assert_close_rounding(other.precondition_noise(s), torch.tensor(ours.sigma_to_timestep(sigma)), 2, 1.0)
        denoised = other.precondition_outputs(x, model_output, s)
        assert_close_rounding(
            denoised, ours.denoise(model_output, x, sigma), 4, x.abs().max() + model_output.abs().max()
        )
    # and back: our scheduler built from theirs keeps the shared parameters
    back = HPDMScheduler.from_config(other.config)
    assert all(back.config[k] == ours.config[k] for k in ("sigma_min", "sigma_max", "sigma_data", "rho"))
