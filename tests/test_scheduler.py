"""Tests of HPDMScheduler: EDM identities, external references (diffusers EDMEulerScheduler, EDM algorithm 2),
sampled distributions, per-level grids and step counts, config round trip, argument checks."""

import math

import pytest
import torch
from conftest import assert_close_rounding, rounding_atol
from diffusers import EDMEulerScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_hpdm.schedulers import HPDMScheduler, HPDMSchedulerOutput

SD = 0.5  # sigma_data


def edm_v_coefficients(sigma, sd=SD):
    """Independent transcription of EDM preconditioning with the v-prediction (k-diffusion VDenoiser) sign."""
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = -sigma * sd / (sigma**2 + sd**2) ** 0.5
    c_in = 1 / (sigma**2 + sd**2) ** 0.5
    return c_skip, c_out, c_in


def karras_grid(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM eq. 5 time steps, with t_N = 0."""
    i = torch.arange(n, dtype=torch.float64)
    ramp = i / (n - 1) if n > 1 else i
    t = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, t.new_zeros(1)])


def run_loop(scheduler, x, model, generator=None, fused=False):
    """The pipeline's loop (DESIGN §6); `model(x_in, timestep)` returns the raw output F. Returns all samples."""
    trajectory = []
    for t in scheduler.timesteps:
        x = scheduler.churn(x, generator)
        sigma = scheduler.current_sigma
        x_in = scheduler.scale_model_input(x, t)
        out = model(x_in, scheduler.sigma_to_timestep(sigma))
        if fused:
            x = scheduler.step(None, t, x, denoised=scheduler.denoise(out, x, sigma)).prev_sample
        else:
            x = scheduler.step(out, t, x).prev_sample
        trajectory.append(x)
    return trajectory


def smooth_model(x_in, timestep):
    """A fixed nonlinear raw model F(c_in x, c_noise)."""
    return 0.5 * torch.tanh(x_in) + 0.1 * timestep


# ------------------------------------------------------------------------------------------------- identities
@settings(max_examples=60, deadline=None)
@given(sigma=st.floats(min_value=1e-3, max_value=1e3), kind=st.sampled_from(["v_prediction", "epsilon", "sample"]))
def test_denoise_of_exact_target_recovers_x0(sigma, kind):
    scheduler = HPDMScheduler(prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    sigmas = torch.full((3,), sigma, dtype=torch.float64)
    target = scheduler.training_target(x0, eps, sigmas)
    x0_hat = scheduler.denoise(target, scheduler.add_noise_at_sigmas(x0, eps, sigmas), sigmas)
    # float64, a few roundings each in noising, target and denoising, at the noisy sample's scale (x0 + sigma eps
    # cancels back to x0)
    assert_close_rounding(x0_hat, x0, 8, x0.abs().max() + sigma * eps.abs().max())


@settings(max_examples=60, deadline=None)
@given(sigma=st.floats(min_value=1e-4, max_value=1e4))
def test_loss_weight_times_c_out_squared_is_one(sigma):
    scheduler = HPDMScheduler()
    c_skip, c_out, c_in, c_noise = scheduler.precondition(sigma)
    # float64: ~5 roundings in the weight, ~7 in c_out squared
    assert scheduler.loss_weight(sigma) * c_out**2 == pytest.approx(1.0, rel=rounding_atol(1.0, 8, torch.float64))
    # ... and the coefficients are EDM's (v-prediction sign), c_noise = log(sigma) / 4 (the same expression)
    rel = rounding_atol(1.0, 4, torch.float64)  # norm**2 of a square root against the sum of squares
    assert (c_skip, c_out, c_in) == pytest.approx(edm_v_coefficients(sigma), rel=rel)
    assert c_noise == math.log(sigma) / 4


def test_v_target_is_the_usual_velocity():
    # With c_out < 0 the target is v = (sd * eps - sigma / sd * x0) / sqrt(sigma^2 + sd^2) (alpha*eps - sigma*x0).
    scheduler = HPDMScheduler()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    sigmas = torch.tensor([0.01, 0.5, 3.0, 70.0], dtype=torch.float64)
    s = sigmas[:, None]
    expected = (SD * eps - s / SD * x0) / (s**2 + SD**2).sqrt()
    # float64. The scheduler computes (x0 - c_skip (x0 + s eps)) / c_out, which cancels x0 down to its share
    # s^2 / (s^2 + SD^2) at low noise: 4 roundings of |x0| + 2 c_skip |x_noisy|, magnified by 1 / |c_out|
    c_skip, c_out, _ = edm_v_coefficients(s)
    scale = (x0.abs() + 2 * c_skip * (x0.abs() + s * eps.abs())) / c_out.abs()
    assert_close_rounding(scheduler.get_velocity(x0, eps, sigmas), expected, 4, scale)
    assert_close_rounding(scheduler.training_target(x0, eps, sigmas), expected, 4, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_with_per_level_sigmas(dtype):
    scheduler = HPDMScheduler()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 4, 2, 2, 3, 5, generator=g, dtype=dtype)  # (B, L, C, F, H, W)
    eps = torch.randn(x0.shape, generator=g, dtype=dtype)
    sigmas = scheduler.sample_training_sigmas(3, 4, generator=g, dtype=dtype)  # (B, L)
    x_noisy = scheduler.add_noise_at_sigmas(x0, eps, sigmas)
    scale = x0.abs().max() + sigmas.max() * eps.abs().max()  # the noisy sample's
    assert_close_rounding(x_noisy[1, 2], x0[1, 2] + sigmas[1, 2] * eps[1, 2], 2, scale)  # a product and a sum
    x0_hat = scheduler.denoise(scheduler.training_target(x0, eps, sigmas), x_noisy, sigmas)
    assert x0_hat.dtype == dtype
    # a few roundings each in noising, target and denoising, in `dtype`, at the noisy sample's scale
    assert_close_rounding(x0_hat, x0, 8, scale)
    c_in = scheduler.precondition(sigmas)[2]
    # one product of the same numbers (correctly rounded): exact
    assert torch.equal(scheduler.precondition_inputs(x_noisy, sigmas)[2, 3], c_in[2, 3] * x_noisy[2, 3])


# ------------------------------------------------------------------------------------------ external references
def test_euler_matches_diffusers_edm_euler():
    n = 18
    ours = HPDMScheduler(level_samplers=["euler"])
    ref = EDMEulerScheduler(
        sigma_min=0.002,
        sigma_max=80.0,
        sigma_data=SD,
        sigma_schedule="karras",
        prediction_type="v_prediction",
        rho=7.0,
    )
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    # diffusers builds the grid in float32: the power rho multiplies its base's rounding rho times (a few eps of
    # relative error in sigma, a quarter of that in c_noise = log(sigma) / 4), and both round c_noise to float32
    assert_close_rounding(ours.timesteps, ref.timesteps, 7 / 4 + 2, 1.0)
    assert ours.init_noise_sigma == pytest.approx(ref.sigmas[0].item(), rel=rounding_atol(1.0, 7 + 1))

    def model(x_in, t):
        return 0.3 * x_in - 0.2 + 0.1 * t

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * ours.init_noise_sigma
    ours_trajectory = run_loop(ours, x.clone(), model)
    y = x.clone()
    for t, x_ours in zip(ref.timesteps, ours_trajectory, strict=True):
        scale = y.abs().max()  # the step's input: earlier differences shrink with it (by sigma_next / sigma)
        y = ref.step(model(ref.scale_model_input(y, t), t), t, y).prev_sample
        # float32 steps (diffusers' direct form against our convex combination) with diffusers' float32 sigmas
        # (rho = 7 times the base's rounding): a few roundings per step at the step input's scale
        assert_close_rounding(x_ours, y, 7 + 8, scale)
    assert ours_trajectory[-1].abs().max() < 10  # a real trajectory, not a trivial one


def edm_algorithm_2(denoiser, x, t_steps, s_churn, s_tmin, s_tmax, s_noise, generator):
    """EDM (Karras et al. 2022) algorithm 2, transcribed line by line."""
    n = len(t_steps) - 1
    for i in range(n):
        t_cur, t_next = t_steps[i].item(), t_steps[i + 1].item()
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= t_cur <= s_tmax else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype) * s_noise
            x_hat = x + math.sqrt(t_hat**2 - t_cur**2) * eps
        d = (x_hat - denoiser(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d
        if i < n - 1:
            d_prime = (x_next - denoiser(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


@pytest.mark.parametrize("s_churn", [0.0, 3.0, 200.0])  # gamma = 0, 0.25, clamped to sqrt(2) - 1
def test_heun_with_churn_matches_edm_algorithm_2(s_churn):
    n, s_tmin, s_tmax, s_noise = 12, 0.05, 50.0, 1.003
    scheduler = HPDMScheduler(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    scheduler.set_timesteps(n)
    # float64: the base of the power (~4 roundings) relative to its smallest value, sigma_min**(1 / rho) (4.6x
    # smaller than sigma_max**(1 / rho)), times rho for the power
    grid = karras_grid(n)
    assert_close_rounding(scheduler.sigmas, grid, 7 * 4 * (80.0 / 0.002) ** (1 / 7), grid)

    def denoiser(x, sigma):
        c_skip, c_out, c_in = edm_v_coefficients(sigma)
        return c_skip * x + c_out * smooth_model(c_in * x, math.log(sigma) / 4)

    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 80.0
    expected = edm_algorithm_2(
        denoiser, x, karras_grid(n), s_churn, s_tmin, s_tmax, s_noise, torch.Generator().manual_seed(5)
    )
    got = run_loop(scheduler, x, smooth_model, torch.Generator().manual_seed(5))
    assert len(got) == 2 * n - 1
    # float64 throughout: ~8 roundings per evaluation, at most at the initial scale (differences shrink with x)
    assert_close_rounding(got[-1], expected, 8 * (2 * n - 1), x.abs().max(), torch.float64)
    if s_churn > 0:  # the churn actually changed the result
        no_churn = edm_algorithm_2(denoiser, x, karras_grid(n), 0.0, s_tmin, s_tmax, s_noise, None)
        assert (no_churn - expected).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- distributions
MIX_W, MIX_MU, MIX_S = torch.tensor([0.3, 0.7]), torch.tensor([-1.0, 0.8]), torch.tensor([0.2, 0.4])


def mixture_model(x_in, timestep):
    """Raw v-prediction output of the exact denoiser E[x0 | x] of a 1-D two-Gaussian mixture."""
    sigma = torch.exp(4 * torch.as_tensor(timestep, dtype=torch.float64))
    c_skip, c_out, c_in = edm_v_coefficients(sigma)
    x = x_in / c_in
    var = MIX_S.double() ** 2 + sigma**2  # (2,) marginal variances at sigma
    log_p = torch.log(MIX_W.double()) - 0.5 * (x[..., None] - MIX_MU.double()) ** 2 / var - 0.5 * torch.log(var)
    resp = torch.softmax(log_p, dim=-1)
    posterior_means = MIX_MU.double() + MIX_S.double() ** 2 / var * (x[..., None] - MIX_MU.double())
    denoised = (resp * posterior_means).sum(-1)
    return (denoised - c_skip * x) / c_out


@pytest.mark.parametrize(
    "level, s_churn",
    [(0, 0.0), (0, 20.0), (1, 0.0), (2, 0.0)],
    ids=["heun-level0", "heun-churn-level0", "euler-level1", "euler-level2"],
)
def test_sampled_distribution_matches_mixture(level, s_churn):
    # Heun (2nd order) takes 32 steps; Euler is 1st order: its std is low by ~1/n on this mixture (measured 0.05 /
    # 0.016 / 0.004 at 32 / 128 / 512 steps), so it takes 128 steps and gets 0.02 of discretisation slack.
    n_samples, slack = 4000, (0.01 if level == 0 else 0.02)
    scheduler = HPDMScheduler(s_churn=s_churn, s_tmin=0.05, s_tmax=50.0, level_steps=[32, 128, 128])
    scheduler.set_timesteps(level=level)
    assert scheduler.sampler == ("heun" if level == 0 else "euler")
    g = torch.Generator().manual_seed(6 + level)
    x = torch.randn(n_samples, 1, generator=g, dtype=torch.float64) * scheduler.init_noise_sigma
    x = run_loop(scheduler, x, mixture_model, g)[-1].squeeze(1)

    mean = (MIX_W * MIX_MU).sum().item()
    central = MIX_MU - mean
    var = (MIX_W * (MIX_S**2 + central**2)).sum().item()
    mu4 = (MIX_W * (central**4 + 6 * central**2 * MIX_S**2 + 3 * MIX_S**4)).sum().item()
    se_mean = math.sqrt(var / n_samples)
    se_std = math.sqrt((mu4 - var**2) / n_samples) / (2 * math.sqrt(var))
    assert abs(x.mean().item() - mean) < 4 * se_mean + slack
    assert abs(x.std().item() - math.sqrt(var)) < 4 * se_std + slack
    # the mode weights are right too: the modes are well separated at -0.2
    frac = (x < -0.2).double().mean().item()
    assert abs(frac - MIX_W[0].item()) < 4 * math.sqrt(0.3 * 0.7 / n_samples) + slack


# ------------------------------------------------------------------------------------- grids and step counts
@pytest.mark.parametrize("growth, shift", [((2, 2, 2), 2 * math.sqrt(2)), ((1, 2, 2), 2.0)])
def test_level_grid_is_level0_grid_times_shift_power(growth, shift):
    scheduler = HPDMScheduler(level_growth=growth, level_steps=[10, 10, 10, 10])
    assert scheduler.noise_shift == pytest.approx(shift, rel=rounding_atol(1.0, 1, torch.float64))  # a square root
    scheduler.set_timesteps(level=0)
    level0 = scheduler.sigmas.clone()
    for level in (1, 2, 3):
        scheduler.set_timesteps(level=level)
        assert torch.equal(scheduler.sigmas[:-1], level0[:-1] * scheduler.noise_shift**level)
        assert scheduler.sigmas[-1] == 0 and scheduler.init_noise_sigma == scheduler.sigmas[0].item()
    assert HPDMScheduler(level_noise_shift=1.5).noise_shift == 1.5


@pytest.mark.parametrize("n, expected", [(5, [5, 2, 1, 1]), (32, [32, 16, 8, 4]), (1, [1, 1, 1, 1])])
def test_step_counts_halve_per_level_and_evaluations_match_timesteps(n, expected):
    scheduler = HPDMScheduler()
    for level, steps in enumerate(expected):
        scheduler.set_timesteps(n, level=level)
        assert scheduler.num_inference_steps == steps and len(scheduler.sigmas) == steps + 1
        evaluations = 2 * steps - 1 if level == 0 else steps
        assert len(scheduler) == len(scheduler.timesteps) == evaluations
        calls = []
        run_loop(scheduler, torch.zeros(1, 2), lambda x_in, t, calls=calls: calls.append(t) or x_in)
        assert len(calls) == evaluations


def test_explicit_level_steps_override_halving():
    scheduler = HPDMScheduler(level_steps=[7, 6, 5])
    assert [scheduler.steps_for_level(level, 100) for level in range(3)] == [7, 6, 5]
    scheduler.set_timesteps(100, level=1, level_steps=[3, 9])
    assert scheduler.num_inference_steps == 9 and len(scheduler.timesteps) == 9  # euler at level 1


def test_timesteps_are_c_noise_of_evaluated_sigmas_with_churn():
    n, s_churn = 6, 1.2  # gamma = 0.2, below the sqrt(2) - 1 clamp
    scheduler = HPDMScheduler(s_churn=s_churn)
    scheduler.set_timesteps(n)
    gamma = min(s_churn / n, math.sqrt(2) - 1)
    expected_sigmas = []
    for i in range(n):
        expected_sigmas.append(scheduler.sigmas[i].item() * (1 + gamma))
        if i < n - 1:
            expected_sigmas.append(scheduler.sigmas[i + 1].item())
    seen = []
    x = torch.zeros(2, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    for t in scheduler.timesteps:
        x = scheduler.churn(x, g)
        seen.append(scheduler.current_sigma)
        c_noise = math.log(scheduler.current_sigma) / 4
        assert t.item() == pytest.approx(c_noise, abs=rounding_atol(abs(c_noise), 1))  # timesteps are float32
        x = scheduler.step(torch.zeros_like(x), t, x).prev_sample
    assert seen == pytest.approx(expected_sigmas, rel=rounding_atol(1.0, 2, torch.float64))  # a sum and a product
    with pytest.raises(ValueError, match="finished"):
        scheduler.step(torch.zeros_like(x), scheduler.timesteps[-1], x)


def test_fused_denoised_step_equals_model_output_step_and_keeps_dtype():
    scheduler = HPDMScheduler(s_churn=5.0)
    scheduler.set_timesteps(8)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 80
    a = run_loop(scheduler, x, smooth_model, torch.Generator().manual_seed(9))
    scheduler.set_timesteps(8)
    b = run_loop(scheduler, x, smooth_model, torch.Generator().manual_seed(9), fused=True)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True)) and a[-1].dtype == torch.float64
    scheduler.set_timesteps(8)
    out = scheduler.step(smooth_model(x, 0.0), scheduler.timesteps[0], x, return_dict=True)
    assert isinstance(out, HPDMSchedulerOutput) and out.pred_original_sample.shape == x.shape


def test_churn_noise_per_sample_generators_and_amount():
    scheduler = HPDMScheduler(s_churn=4.0, s_noise=1.5)
    scheduler.set_timesteps(4)
    x = torch.zeros(2, 3, 5)
    both = scheduler.churn(x, [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)])
    sigma, sigma_hat = scheduler.sigmas[0].item(), scheduler.sigma_hats[0].item()
    gamma = min(4.0 / 4, math.sqrt(2) - 1)
    assert sigma_hat == pytest.approx(sigma * (1 + gamma), rel=rounding_atol(1.0, 3, torch.float64))
    eps1 = torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(11))
    expected = math.sqrt(sigma_hat**2 - sigma**2) * 1.5 * eps1
    # the same draws; the float64 root (** 0.5 or sqrt: an ulp), its float32 cast and the product
    assert_close_rounding(both[1:], expected, 3, expected.abs())
    # no churn at a level outside churn_levels
    scheduler.set_timesteps(4, level=1)
    assert torch.equal(scheduler.churn(x, torch.Generator().manual_seed(10)), x)


# ------------------------------------------------------------------------------------------ config and errors
def test_config_round_trip(tmp_path):
    scheduler = HPDMScheduler(
        level_growth=(1, 2, 2),
        level_steps=[8, 4, 3],
        level_samplers=["heun", "euler", "heun"],
        s_churn=5.0,
        churn_levels=(0, 2),
        rho=5.0,
    )
    scheduler.save_config(tmp_path)
    loaded = HPDMScheduler.from_pretrained(tmp_path)

    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(scheduler.config) and loaded.noise_shift == 2.0
    for level in range(3):
        scheduler.set_timesteps(level=level)
        loaded.set_timesteps(level=level)
        assert torch.equal(scheduler.sigmas, loaded.sigmas) and torch.equal(scheduler.timesteps, loaded.timesteps)
        assert torch.equal(scheduler.sigma_hats, loaded.sigma_hats)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma_min=1.0, sigma_max=0.5), "sigma_min < sigma_max"),
        (dict(level_samplers=["heun", "ddim"]), "Unknown sampler"),
        (dict(s_churn=-1.0), "s_churn must be >= 0"),
        (dict(level_steps=[4, 0]), "level_steps"),
        (dict(prediction_type="x0"), "prediction_type"),
        (dict(level_noise_shift=0.0), "level_noise_shift"),
        (dict(level_growth=(2, 2)), "level_growth"),
    ],
)
def test_bad_init_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HPDMScheduler(**kwargs)


@pytest.mark.parametrize(
    "config, call, match",
    [
        ({}, dict(num_inference_steps=0), "num_inference_steps must be >= 1"),
        ({}, dict(num_inference_steps=4, level=-1), "level must be >= 0"),
        ({}, dict(), "Pass num_inference_steps"),
        (dict(level_steps=[4, 2]), dict(num_inference_steps=4, level=2), "level_steps"),
        ({}, dict(num_inference_steps=4, level_steps=[4, 0]), "level_steps"),
        (dict(level_samplers=["heun"]), dict(num_inference_steps=4, level=1), "level_samplers"),
    ],
)
def test_bad_set_timesteps_arguments_raise(config, call, match):
    with pytest.raises(ValueError, match=match):
        HPDMScheduler(**config).set_timesteps(**call)


def test_step_with_a_timestep_not_in_the_schedule_raises():
    with pytest.raises(ValueError, match="not in scheduler.timesteps"):
        HPDMScheduler().step(torch.zeros(1), 0.0, torch.zeros(1))


# ------------------------------------------------------------------------------------------ training sigmas
def assert_same_draws(rows: torch.Tensor, alone: torch.Tensor) -> None:
    """Rows drawn from their own generators in a batch equal the same rows drawn alone: the same random numbers and
    float32 operations, up to ``exp``, whose vectorised and scalar paths (taken at other batch sizes) may each be an
    ulp off: 2 eps relative."""
    assert_close_rounding(rows, alone, 2, alone)


def test_training_sigmas_lognormal_per_level_and_deterministic():
    scheduler = HPDMScheduler(p_mean=-0.8, p_std=1.1)
    n = 10_000
    sigmas = scheduler.sample_training_sigmas(n, 3, generator=torch.Generator().manual_seed(12))
    assert sigmas.shape == (n, 3) and sigmas.dtype == torch.float32
    log_sigma = sigmas.double().log()
    for level in range(3):
        expected_mean = -0.8 + level * math.log(2 * math.sqrt(2))
        assert abs(log_sigma[:, level].mean().item() - expected_mean) < 4 * 1.1 / math.sqrt(n)
        assert abs(log_sigma[:, level].std().item() - 1.1) < 4 * 1.1 / math.sqrt(2 * n)
    again = scheduler.sample_training_sigmas(n, 3, generator=torch.Generator().manual_seed(12))
    other = scheduler.sample_training_sigmas(n, 3, generator=torch.Generator().manual_seed(13))
    assert torch.equal(sigmas, again) and not torch.equal(sigmas, other)
    # with one generator per row, row i depends only on generator i
    rows = scheduler.sample_training_sigmas(2, 3, generator=[torch.Generator().manual_seed(s) for s in (14, 15)])
    alone = scheduler.sample_training_sigmas(1, 3, generator=[torch.Generator().manual_seed(15)])
    assert_same_draws(rows[1:], alone)


def test_training_sigmas_high_noise_mixture():
    n, fraction = 20_000, 0.25
    # fraction 0 (the default) draws exactly what the single log-normal always drew
    single = HPDMScheduler(p_mean=-0.4, p_std=1.4)
    z = torch.randn(n, 3, generator=torch.Generator().manual_seed(3))
    expected = (-0.4 + torch.arange(3) * math.log(single.noise_shift) + 1.4 * z).exp()
    assert torch.equal(single.sample_training_sigmas(n, 3, generator=torch.Generator().manual_seed(3)), expected)
    # a main component far from N(3, 0.1) (6 std apart) tells the two apart exactly
    mixed = HPDMScheduler(p_mean=-2.0, p_std=0.5, high_noise_fraction=fraction)
    log_sigma = mixed.sample_training_sigmas(n, 3, generator=torch.Generator().manual_seed(3)).double().log()
    high = log_sigma[:, 0] > 1.0
    assert abs(high.double().mean().item() - fraction) < 4 * math.sqrt(fraction * (1 - fraction) / n)
    assert abs(log_sigma[high, 0].mean().item() - 3.0) < 0.01 and abs(log_sigma[high, 0].std().item() - 0.1) < 0.01
    assert abs(log_sigma[~high, 0].mean().item() + 2.0) < 0.02 and abs(log_sigma[~high, 0].std().item() - 0.5) < 0.02
    # the per-level shift applies to both components
    shift = log_sigma[:, 2] - log_sigma[:, 0]
    assert abs(shift.mean().item() - 2 * math.log(mixed.noise_shift)) < 0.03  # 4 std of the mean
    # one generator per row still decides its row alone
    rows = mixed.sample_training_sigmas(3, 2, generator=[torch.Generator().manual_seed(s) for s in (4, 5, 6)])
    alone = mixed.sample_training_sigmas(1, 2, generator=[torch.Generator().manual_seed(6)])
    assert_same_draws(rows[2:], alone)


@pytest.mark.parametrize(
    "kwargs", [dict(high_noise_fraction=1.5), dict(high_noise_fraction=-0.1), dict(high_noise_p_std=0)]
)
def test_bad_high_noise_mixture_raises(kwargs):
    with pytest.raises(ValueError, match="high_noise"):
        HPDMScheduler(**kwargs)


def test_starting_mid_schedule_picks_the_first_evaluation_of_an_interval():
    scheduler = HPDMScheduler()
    scheduler.set_timesteps(6)
    t = scheduler.timesteps[4]  # sigma_2: also the Heun correction of interval 1 (index 3)
    assert scheduler.timesteps[3] == t
    scheduler.scale_model_input(torch.zeros(1), t)
    assert scheduler.step_index == 4 and scheduler.current_sigma == scheduler.sigmas[2].item()
    scheduler.set_timesteps(6)
    scheduler.set_begin_index(3)
    scheduler.churn(torch.zeros(1))  # churn has no timestep: the begin index decides
    assert scheduler.step_index == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampling_matches_cpu_with_cpu_generator():
    scheduler = HPDMScheduler(s_churn=3.0)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(16), dtype=torch.float64) * 80
    scheduler.set_timesteps(6)
    cpu = run_loop(scheduler, x, smooth_model, torch.Generator().manual_seed(17))[-1]
    scheduler.set_timesteps(6, device="cuda")
    cuda = run_loop(scheduler, x.cuda(), smooth_model, torch.Generator().manual_seed(17))[-1]
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-9, atol=1e-9)


def test_training_sigmas_clean_context():
    """``clean_context_fraction``: that share of rows draws the levels below a uniform cut level from the clean
    component (shifted per level); the cut level and the finer ones keep their draw; 0 draws what it always drew."""
    n, fraction, L = 30_000, 0.4, 3
    kw = dict(p_mean=1.5, p_std=0.3, high_noise_fraction=0.25, clean_context_p_std=0.2)
    plain = HPDMScheduler(**kw)
    mixed = HPDMScheduler(**kw, clean_context_fraction=fraction)
    assert torch.equal(
        HPDMScheduler(**kw, clean_context_fraction=0.0).sample_training_sigmas(
            64, L, generator=torch.Generator().manual_seed(1)
        ),
        plain.sample_training_sigmas(64, L, generator=torch.Generator().manual_seed(1)),
    )
    before = plain.sample_training_sigmas(n, L, generator=torch.Generator().manual_seed(2))
    after = mixed.sample_training_sigmas(n, L, generator=torch.Generator().manual_seed(2))
    shift = math.log(mixed.noise_shift) * torch.arange(L)
    # the clean component (ln sigma ~ N(-2.3, 0.2) at level 0) and the main one (N(1.5, 0.3)) are 6+ std apart
    clean = (after.double().log() - shift) < -0.7  # (n, L)
    cut = clean.sum(1)  # levels 0 .. cut-1 are clean
    assert torch.equal(clean, torch.arange(L) < cut[:, None])  # always a prefix of the levels, never the finest
    assert cut.max() == L - 1
    share = (cut > 0).double().mean().item()
    assert abs(share - fraction) < 4 * math.sqrt(fraction * (1 - fraction) / n)
    assert abs((cut == 1).double().mean().item() - fraction / 2) < 0.015  # the cut level is uniform over 1..L-1
    # unchanged levels keep exactly their draw; clean ones have the clean component's statistics
    assert torch.equal(after[~clean], before[~clean])
    z = after.double().log()[:, 0][clean[:, 0]]
    assert abs(z.mean().item() + 2.3) < 0.01 and abs(z.std().item() - 0.2) < 0.01
    # one generator per row still decides its row alone; one level has no coarser level to clean
    rows = mixed.sample_training_sigmas(3, L, generator=[torch.Generator().manual_seed(s) for s in (4, 5, 6)])
    alone = mixed.sample_training_sigmas(1, L, generator=[torch.Generator().manual_seed(6)])
    assert_same_draws(rows[2:], alone)
    one = mixed.sample_training_sigmas(64, 1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(one, plain.sample_training_sigmas(64, 1, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("kwargs", [dict(clean_context_fraction=2.0), dict(clean_context_p_std=0.0)])
def test_bad_clean_context_raises(kwargs):
    with pytest.raises(ValueError, match="clean_context"):
        HPDMScheduler(**kwargs)
