"""EDM scheduler with per-level noise shift, step counts and samplers (DESIGN §3, paper §3.1, §4.5, appendix C).

Sigma is the only time variable: `x_sigma = x0 + sigma * eps`. The network `F` is EDM-preconditioned (Karras et al.
2022, table 1) and its regression target is `v` (k-diffusion `VDenoiser` sign): `D(x; sigma) = c_skip * x + c_out *
F(c_in * x, c_noise)`. Level `l` uses `sigma * shift**l` for both the training log-normal and the sampling grid.
"""

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from .parametrization import EDMParametrization
from .training_sigmas import draw_training_sigmas

logger = logging.get_logger(__name__)

SAMPLERS = ("heun", "euler")
PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")
# Config keys that define the denoiser and the grid, shared by name with diffusers' EDM schedulers (`compatibles`).
DENOISER_KEYS = ("sigma_min", "sigma_max", "sigma_data", "rho", "prediction_type", "num_train_timesteps")


@dataclass
class HPDMSchedulerOutput(BaseOutput):
    """
    Output of [`HPDMScheduler.step`].

    Args:
        prev_sample (`torch.Tensor` of shape `(batch_size, ...)`):
            The sample at the next sigma of the schedule (the Euler prediction after a Heun first sub-step).
        pred_original_sample (`torch.Tensor` of shape `(batch_size, ...)`):
            The denoised estimate `x0 = D(x; sigma)` at the sigma that was just evaluated.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class HPDMScheduler(EDMParametrization, SchedulerMixin, ConfigMixin):
    """
    EDM scheduler for hierarchical patch diffusion: Heun with optional churn (EDM algorithm 2) at level 0, Euler at
    finer levels, a per-level noise shift and per-level step counts. `timesteps` holds one entry per model evaluation
    (the `c_noise = log(sigma) / 4` of the sigma evaluated, as in diffusers' `EDMEulerScheduler`); `step` takes a raw
    model output or an already fused `denoised` canvas.

    After construction the schedule is level 0's with `num_train_timesteps` steps (as `set_timesteps(
    num_train_timesteps)` builds it), so `timesteps`, `sigmas` and `add_noise(x0, noise, timesteps)` work before any
    `set_timesteps` call, the way diffusers' training scripts use EDM schedulers. `compatibles` lists diffusers' EDM
    schedulers: for a v-prediction model (the default) they share `sigma_data`, the Karras grid, `c_in`, `c_noise`
    and the denoised estimate, so they sample level 0 of the same transformer (the pipeline needs this scheduler's
    per-level grid and fused `step`).

    Args:
        sigma_min (`float`, defaults to 0.002): Smallest nonzero sigma of the level-0 sampling grid.
        sigma_max (`float`, defaults to 80.0): Largest sigma of the level-0 sampling grid.
        sigma_data (`float`, defaults to 0.5): Standard deviation of the data, used by the preconditioning.
        rho (`float`, defaults to 7.0): Exponent of the Karras sigma grid.
        p_mean (`float`, defaults to -1.2): Mean of `ln(sigma)` at level 0 during training.
        p_std (`float`, defaults to 1.2): Standard deviation of `ln(sigma)` during training.
        high_noise_fraction (`float`, defaults to 0.0): Fraction of training rows whose level-0 `ln(sigma)` is drawn
            from a second log-normal, `N(high_noise_p_mean, high_noise_p_std)`, instead (not in the paper; see
            `sample_training_sigmas`). 0 keeps the single log-normal.
        high_noise_p_mean (`float`, defaults to 3.0): Mean of `ln(sigma)` of that component (sigma ~ 20).
        high_noise_p_std (`float`, defaults to 0.1): Its standard deviation.
        clean_context_fraction (`float`, defaults to 0.0): Fraction of training rows whose coarser levels are drawn
            almost clean, as the pipeline's context pass sees them (not in the paper; see `sample_training_sigmas`).
            0 keeps every level's draw independent.
        clean_context_p_mean (`float`, defaults to -2.3): Mean of `ln(sigma)` of those levels at level 0 (sigma ~
            0.1, the pipeline's default `context_sigma`), shifted per level like every draw.
        clean_context_p_std (`float`, defaults to 0.5): Its standard deviation.
        level_growth (`tuple[int, int, int]`, defaults to `(2, 2, 2)`): Per-axis (F, H, W) growth between levels.
        level_noise_shift (`float`, *optional*): Sigma multiplier per level; `None` means `sqrt(prod(level_growth))`.
        level_steps (`list[int]`, *optional*): Explicit step count per level, overriding `N // 2**level`.
        level_samplers (`list[str]`, *optional*): `"heun"` or `"euler"` per level; `None` means Heun at level 0 only.
        s_churn (`float`, defaults to 0.0): EDM churn; `gamma = min(s_churn / n, sqrt(2) - 1)`.
        s_tmin (`float`, defaults to 0.0): Churn only where `s_tmin <= sigma <= s_tmax`.
        s_tmax (`float`, defaults to `inf`): See `s_tmin`.
        s_noise (`float`, defaults to 1.0): Scale of the churn noise.
        churn_levels (`tuple[int, ...]`, defaults to `(0,)`): Levels at which churn applies.
        prediction_type (`str`, defaults to `"v_prediction"`): What `F` predicts: `"v_prediction"`, `"epsilon"` or
            `"sample"`.
        num_train_timesteps (`int`, defaults to 1000): Steps of the schedule set at construction (level 0, as
            diffusers' EDM schedulers do); `set_timesteps` replaces it.
    """

    # Diffusers' EDM schedulers: the same preconditioning and `c_noise` timesteps for v-prediction (see above).
    _compatibles = ["EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"]
    order = 1

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        rho: float = 7.0,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        high_noise_fraction: float = 0.0,
        high_noise_p_mean: float = 3.0,
        high_noise_p_std: float = 0.1,
        clean_context_fraction: float = 0.0,
        clean_context_p_mean: float = -2.3,
        clean_context_p_std: float = 0.5,
        level_growth: tuple[int, ...] | list[int] = (2, 2, 2),
        level_noise_shift: float | None = None,
        level_steps: list[int] | None = None,
        level_samplers: list[str] | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        churn_levels: tuple[int, ...] | list[int] = (0,),
        prediction_type: str = "v_prediction",
        num_train_timesteps: int = 1000,
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"Need 0 < sigma_min < sigma_max, got {sigma_min=} and {sigma_max=}; swap or fix them.")
        if sigma_data <= 0 or p_std <= 0 or rho <= 0:
            raise ValueError(f"sigma_data, p_std and rho must be positive, got {sigma_data=}, {p_std=}, {rho=}.")
        if not 0 <= high_noise_fraction <= 1 or high_noise_p_std <= 0:
            raise ValueError(
                f"Need 0 <= high_noise_fraction <= 1 and high_noise_p_std > 0, got {high_noise_fraction=} and "
                f"{high_noise_p_std=}."
            )
        if not 0 <= clean_context_fraction <= 1 or clean_context_p_std <= 0:
            raise ValueError(
                f"Need 0 <= clean_context_fraction <= 1 and clean_context_p_std > 0, got {clean_context_fraction=} "
                f"and {clean_context_p_std=}."
            )
        if len(level_growth) != 3 or any(int(g) < 1 for g in level_growth):
            raise ValueError(f"level_growth must be three per-axis factors >= 1 (F, H, W), got {level_growth}.")
        if level_noise_shift is not None and level_noise_shift <= 0:
            raise ValueError(f"level_noise_shift must be positive (or None for the default), got {level_noise_shift}.")
        if level_steps is not None and (len(level_steps) == 0 or min(level_steps) < 1):
            raise ValueError(f"level_steps must be a non-empty list of step counts >= 1, got {level_steps}.")
        if level_samplers is not None and not set(level_samplers) <= set(SAMPLERS):
            raise ValueError(f"Unknown sampler in level_samplers={level_samplers}; use only {SAMPLERS}.")
        if s_churn < 0:
            raise ValueError(f"s_churn must be >= 0 (0 disables churn), got {s_churn}.")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"Unknown prediction_type={prediction_type!r}; use one of {PREDICTION_TYPES}.")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}.")
        # JSON turns tuples into lists: store lists so that a save/load round trip gives an identical config.
        self.register_to_config(level_growth=[int(g) for g in level_growth], churn_levels=list(churn_levels))
        # `from_config` of another class drops the keys listed in `_use_default_values` (they take that class's
        # defaults): the denoiser's parameters must travel even when left at ours (EDMEulerScheduler's default
        # prediction_type is epsilon, which would silently misread a v-prediction model).
        defaults = [k for k in self.config.get("_use_default_values", []) if k not in DENOISER_KEYS]
        self.register_to_config(_use_default_values=defaults)
        self.num_inference_steps: int | None = None
        self.level, self.sampler = 0, None
        self.sigmas: torch.Tensor | None = None  # (n + 1,) float64 grid on the CPU, trailing 0
        self.sigma_hats: torch.Tensor | None = None  # (n,) churned sigmas, = sigmas[:-1] without churn
        self.timesteps: torch.Tensor | None = None  # (num_evaluations,) c_noise of each evaluated sigma
        self._evals: list[tuple[int, int]] = []  # (interval, sub-step) per evaluation
        self._eval_sigmas: list[float] = []  # the sigma of each evaluation
        self._step_index = self._begin_index = self._churned_index = None
        self._heun_state: tuple[torch.Tensor, torch.Tensor, float] | None = None  # (x_hat, d, sigma_next - sigma_hat)
        self.set_timesteps(num_train_timesteps, level=0)

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        # SchedulerMixin looks every name up in the diffusers namespace, where this class is not: add it first.
        return [cls] + [c for c in super()._get_compatibles() if c is not cls]

    # ----------------------------------------------------------------------------------------- preconditioning
    @property
    def noise_shift(self) -> float:
        """The per-level sigma multiplier: `level_noise_shift`, or `sqrt(prod(level_growth))` when it is `None`."""
        shift = self.config.level_noise_shift
        return float(shift) if shift is not None else math.sqrt(math.prod(self.config.level_growth))

    # ------------------------------------------------------------------------------------------------- training
    def sample_training_sigmas(
        self,
        batch_size: int,
        num_levels: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """
        Draw training sigmas of shape `(batch_size, num_levels)` with `ln(sigma_l) ~ N(p_mean + l*ln(shift), p_std)`,
        or, for a `high_noise_fraction` of the rows, `N(high_noise_p_mean + l*ln(shift), high_noise_p_std)` at every
        level, and, for a `clean_context_fraction` of the rows, `N(clean_context_p_mean + l*ln(shift),
        clean_context_p_std)` at the levels below a cut level drawn uniformly from `1 .. num_levels - 1`
        (`training_sigmas.draw_training_sigmas`, which says why).

        Args:
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): One generator, or one per row.
        """
        c = self.config
        return draw_training_sigmas(
            batch_size,
            num_levels,
            math.log(self.noise_shift),
            (c.p_mean, c.p_std),
            (c.high_noise_fraction, c.high_noise_p_mean, c.high_noise_p_std),
            (c.clean_context_fraction, c.clean_context_p_mean, c.clean_context_p_std),
            generator=generator,
            device=device,
            dtype=dtype,
        )

    def sigmas_for_timesteps(self, timesteps: float | torch.Tensor) -> torch.Tensor:
        """
        The sigma of each entry of `timesteps`, read from the current schedule as diffusers' `EDMEulerScheduler`
        does: by lookup in `self.timesteps` (the first match; equal timesteps are evaluations at the same sigma), or,
        once `set_begin_index` was called, the sigma at `step_index` (mid-loop) or `begin_index` (before the loop).

        Args:
            timesteps (`float` or `torch.Tensor` of any shape): Entries of `self.timesteps`.

        Returns:
            `torch.Tensor`: float64 sigmas on the CPU, of the shape of `timesteps`.
        """
        t = torch.as_tensor(timesteps)
        sigmas = torch.tensor(self._eval_sigmas, dtype=torch.float64)  # (num_evaluations,)
        if self.begin_index is not None:
            index = self.step_index if self.step_index is not None else self.begin_index
            return sigmas[index].expand(t.shape).clone()
        schedule = self.timesteps.to(t.device)
        match = t.reshape(-1, 1).to(schedule.dtype) == schedule.reshape(1, -1)  # (n, num_evaluations)
        missing = ~match.any(dim=1)
        if missing.any():
            raise ValueError(
                f"timesteps {t.reshape(-1)[missing].tolist()[:4]} are not in scheduler.timesteps (level "
                f"{self.level}, {len(schedule)} evaluations): pass entries of `timesteps` after the matching "
                "`set_timesteps`, or noise levels to `add_noise_at_sigmas(original_samples, noise, sigmas)`."
            )
        return sigmas[match.int().argmax(dim=1).cpu()].reshape(t.shape)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: float | torch.Tensor
    ) -> torch.Tensor:
        """
        `x0 + sigma(t) * eps` at timesteps of the current schedule, as diffusers' `EDMEulerScheduler.add_noise`
        (`sigma(t)` from [`~HPDMScheduler.sigmas_for_timesteps`]). For noise levels use `add_noise_at_sigmas`.

        Args:
            original_samples (`torch.Tensor` of shape `(B, [L,] C, F, H, W)`): Clean samples.
            noise (`torch.Tensor`): Standard normal noise of the same shape.
            timesteps (`float` or `torch.Tensor`): Entries of `timesteps`: a scalar, `(B,)` or `(B, L)`.
        """
        sigmas = self.sigmas_for_timesteps(timesteps)
        return self.add_noise_at_sigmas(original_samples, noise, sigmas)

    # ------------------------------------------------------------------------------------------------- sampling
    def steps_for_level(
        self, level: int, num_inference_steps: int | None, level_steps: list[int] | None = None
    ) -> int:
        """Step count at `level`: `level_steps[level]` if given (argument, then config), else `max(1, N // 2**level)`."""
        if level < 0:
            raise ValueError(f"level must be >= 0, got {level}.")
        if num_inference_steps is not None and num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        steps = level_steps if level_steps is not None else self.config.level_steps
        if steps is not None:
            if len(steps) <= level or min(steps) < 1:
                raise ValueError(f"level_steps={list(steps)} needs an entry >= 1 for every level up to {level}.")
            return int(steps[level])
        if num_inference_steps is None:
            raise ValueError("Pass num_inference_steps (the level-0 step count) or level_steps.")
        return max(1, num_inference_steps // 2**level)

    def sampler_for_level(self, level: int) -> str:
        """`level_samplers[level]`, or `"heun"` at level 0 and `"euler"` elsewhere when it is `None`."""
        samplers = self.config.level_samplers
        if samplers is None:
            return "heun" if level == 0 else "euler"
        if len(samplers) <= level:
            raise ValueError(f"level_samplers={samplers} has no entry for level {level}; give one per level.")
        return samplers[level]

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        level: int = 0,
        device: str | torch.device | None = None,
        level_steps: list[int] | None = None,
    ) -> None:
        """
        Build the sampling schedule of `level`: the Karras grid times `shift**level` with a trailing 0, and one
        timestep per model evaluation (Heun: 2 per interval except the last, which is an Euler step to 0).

        Args:
            num_inference_steps (`int`): The level-0 step count `N`; level `l` takes `max(1, N // 2**l)` steps.
            level (`int`, defaults to 0): The pyramid level to sample.
            device (`str` or `torch.device`, *optional*): Where `timesteps` live (`sigmas` stay on the CPU).
            level_steps (`list[int]`, *optional*): Per-level step counts overriding the config and the halving.
        """
        n = self.steps_for_level(level, num_inference_steps, level_steps)
        sampler = self.sampler_for_level(level)
        cfg = self.config
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        max_inv, min_inv = cfg.sigma_max ** (1 / cfg.rho), cfg.sigma_min ** (1 / cfg.rho)
        grid = (max_inv + ramp * (min_inv - max_inv)) ** cfg.rho * self.noise_shift**level  # (n,)
        churn = cfg.s_churn > 0 and level in cfg.churn_levels
        gamma = min(cfg.s_churn / n, 2**0.5 - 1)
        gammas = [gamma if churn and cfg.s_tmin <= s <= cfg.s_tmax else 0.0 for s in grid.tolist()]
        self.sigmas = torch.cat([grid, grid.new_zeros(1)])
        self.sigma_hats = grid * (1 + torch.tensor(gammas, dtype=torch.float64))
        last = n - 1 if sampler == "heun" else 0  # intervals with a Heun correction: all but the one ending at 0
        self._evals = [(i, sub) for i in range(n) for sub in range(2 if i < last else 1)]
        self._eval_sigmas = [(self.sigma_hats[i] if sub == 0 else self.sigmas[i + 1]).item() for i, sub in self._evals]
        self.timesteps = self.sigma_to_timestep(torch.tensor(self._eval_sigmas, dtype=torch.float64))
        self.timesteps = self.timesteps.to(device=device, dtype=torch.float32)
        self.num_inference_steps, self.level, self.sampler = n, level, sampler
        self.order = 2 if sampler == "heun" else 1
        self._step_index = self._begin_index = self._churned_index = self._heun_state = None

    @property
    def init_noise_sigma(self) -> float:
        """The first sigma of the current level's grid: initial latents are `randn * init_noise_sigma`."""
        return self.config.sigma_max if self.sigmas is None else self.sigmas[0].item()

    @property
    def step_index(self) -> int | None:
        """Index of the current model evaluation in `timesteps`; `None` before the first call of the loop."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The first evaluation index, set by the pipeline with `set_begin_index` to start mid-schedule."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next loop at evaluation `begin_index` (needed to start mid-schedule: `churn` has no timestep)."""
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: float | torch.Tensor) -> int:
        """Index of `timestep` in `timesteps`; of repeated values (Heun) the second, like diffusers' Heun."""
        indices = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero()
        if len(indices) == 0:
            raise ValueError(f"timestep {timestep} is not in scheduler.timesteps; pass one of them.")
        return indices[1 if len(indices) > 1 else 0].item()

    def _current(self, timestep: float | torch.Tensor | None = None) -> int:
        if self.timesteps is None:
            raise ValueError("Call set_timesteps(num_inference_steps, level=...) before sampling.")
        if self._step_index is None:
            if self._begin_index is not None or timestep is None:
                self._step_index = self._begin_index or 0
            else:
                self._step_index = self.index_for_timestep(timestep)
        if self._step_index >= len(self._evals):
            raise ValueError("The schedule is finished; call set_timesteps again for the next level or sample.")
        return self._step_index

    @property
    def current_sigma(self) -> float:
        """The sigma the model must be evaluated at now (churned `sigma_hat`, or the next sigma for a correction)."""
        return self._eval_sigmas[self._current()]

    def churn(
        self, sample: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """
        EDM algorithm 2, lines 4-6: on the first evaluation of a churned interval return `sample + sqrt(sigma_hat^2 -
        sigma^2) * s_noise * eps`; otherwise return `sample` unchanged. Call it at the start of every iteration.

        Args:
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): One generator, or one per sample.
        """
        index = self._current()
        self._churned_index = index
        interval, sub = self._evals[index]
        sigma, sigma_hat = self.sigmas[interval].item(), self.sigma_hats[interval].item()
        if sub == 1 or sigma_hat == sigma:
            return sample
        eps = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        return sample + (sigma_hat**2 - sigma**2) ** 0.5 * self.config.s_noise * eps

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """`c_in * sample` at [`~HPDMScheduler.current_sigma`] (diffusers convention)."""
        self._current(timestep)
        return self.precondition_inputs(sample, self.current_sigma)

    def step(
        self,
        model_output: torch.Tensor | None,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        *,
        denoised: torch.Tensor | None = None,
    ) -> HPDMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """
        One model evaluation's worth of EDM sampling on the whole canvas (EDM algorithm 2, lines 7-8).

        Args:
            model_output (`torch.Tensor`, *optional*): Raw output `F` at `current_sigma`; ignored if `denoised` is set.
            timestep (`float` or `torch.Tensor`): The current entry of `timesteps`.
            sample (`torch.Tensor` of shape `(batch_size, ...)`): The (churned) sample the model was evaluated on.
            generator (`torch.Generator`, *optional*): Unused (churn noise is drawn in `churn`); kept for diffusers.
            return_dict (`bool`, defaults to `True`): Return an [`HPDMSchedulerOutput`] rather than a tuple.
            denoised (`torch.Tensor`, *optional*): An already (fused) denoised estimate `x0` of the whole canvas.
        """
        index = self._current(timestep)
        interval, sub = self._evals[index]
        sigma, sigma_next = self._eval_sigmas[index], self.sigmas[interval + 1].item()
        if sub == 0 and self.sigma_hats[interval] != self.sigmas[interval] and self._churned_index != index:
            logger.warning("Churn is on but `churn` was not called before this step; the sample is not at sigma_hat.")
        work = torch.promote_types(sample.dtype, torch.float32)
        x = sample.to(work)
        if denoised is None:
            if model_output is None:
                raise ValueError("Pass a model_output or a denoised estimate to step().")
            denoised = self.denoise(model_output.to(work), x, sigma)
        x0 = denoised.to(work)
        d = (x - x0) / sigma  # dx/dsigma of the probability-flow ODE
        if sub == 0:
            # x + (sigma_next - sigma) * d, written as a convex combination: x ~ sigma is large early on and the
            # direct form cancels catastrophically (the step to sigma_next = 0 must return x0, not x0 +- ulp(x)).
            ratio = sigma_next / sigma
            prev_sample = ratio * x + (1 - ratio) * x0
            if self.sampler == "heun" and sigma_next > 0:
                self._heun_state = (x, d, sigma_next - sigma)
        else:
            x_hat, d_hat, dt = self._heun_state
            prev_sample = x_hat + dt * (d_hat + d) / 2
            self._heun_state = None
        self._step_index += 1
        prev_sample, x0 = prev_sample.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return prev_sample, x0
        return HPDMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def __len__(self) -> int:
        return 0 if self.timesteps is None else len(self.timesteps)
