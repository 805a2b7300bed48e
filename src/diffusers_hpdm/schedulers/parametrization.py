"""The EDM parametrization (Karras et al. 2022, table 1) in one place: preconditioning, noising and the training
target, shared by training and sampling (DESIGN §3).

`x_sigma = x0 + sigma * eps`; `D(x; sigma) = c_skip * x + c_out * F(c_in * x, c_noise)` with the k-diffusion
`VDenoiser` sign, so that `F`'s regression target is `v` and EDM's loss weight times `c_out^2` is 1.
"""

import math

import torch

Sigma = float | torch.Tensor


class EDMParametrization:
    """Mixin for a scheduler whose config has `sigma_data` and `prediction_type`."""

    @staticmethod
    def broadcast_sigma(sigma: Sigma, sample: torch.Tensor) -> Sigma:
        """Reshape a `()`, `(B,)` or `(B, L)` sigma so that it broadcasts against `(B, [L,] C, F, H, W)` samples."""
        if not isinstance(sigma, torch.Tensor):
            return sigma
        sigma = sigma.to(device=sample.device, dtype=sample.dtype)
        return sigma.reshape(sigma.shape + (1,) * (sample.ndim - sigma.ndim))

    def precondition(self, sigma: Sigma, prediction_type: str | None = None) -> tuple[Sigma, Sigma, Sigma, Sigma]:
        """
        The EDM coefficients `(c_skip, c_out, c_in, c_noise)` at `sigma` (a float or a tensor of any shape).

        `c_in = 1/sqrt(s^2+sd^2)`, `c_noise = log(s)/4`; for v-prediction `c_skip = sd^2/(s^2+sd^2)` and `c_out =
        -s*sd/sqrt(s^2+sd^2)`; for epsilon `(1, -s)`; for sample `(0, 1)`. This is the only place they are written.
        """
        sd, kind = self.config.sigma_data, prediction_type or self.config.prediction_type
        norm = (sigma**2 + sd**2) ** 0.5
        one = torch.ones_like(sigma) if isinstance(sigma, torch.Tensor) else 1.0
        c_noise = torch.log(sigma) / 4 if isinstance(sigma, torch.Tensor) else math.log(sigma) / 4
        if kind == "v_prediction":
            c_skip, c_out = sd**2 / norm**2, -sigma * sd / norm
        elif kind == "epsilon":
            c_skip, c_out = one, -sigma
        else:
            c_skip, c_out = 0 * one, one
        return c_skip, c_out, 1 / norm, c_noise

    def sigma_to_timestep(self, sigma: Sigma) -> Sigma:
        """The transformer's `timestep` input for `sigma`: `c_noise = log(sigma) / 4`."""
        return self.precondition(sigma)[3]

    def precondition_inputs(self, sample: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        """`c_in(sigma) * sample`, with `sigma` broadcast as in [`~HPDMScheduler.broadcast_sigma`]."""
        return self.broadcast_sigma(self.precondition(sigma)[2], sample) * sample

    def denoise(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        """The denoised estimate `x0 = c_skip * sample + c_out * model_output` (used by the pipeline per tile)."""
        c_skip, c_out, _, _ = self.precondition(sigma)
        return self.broadcast_sigma(c_skip, sample) * sample + self.broadcast_sigma(c_out, sample) * model_output

    def loss_weight(self, sigma: Sigma) -> Sigma:
        """EDM weight `(s^2+sd^2)/(s*sd)^2` of `|D - x0|^2`; times `c_out^2` it is 1 for v-prediction (plain MSE)."""
        sd = self.config.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2

    def add_noise_at_sigmas(self, original_samples: torch.Tensor, noise: torch.Tensor, sigmas: Sigma) -> torch.Tensor:
        """`x0 + sigma * eps` at given noise levels: `sigmas` is a float, `(B,)` or `(B, L)` for `(B, [L,] C, F, H,
        W)` samples (the training loss draws sigmas, not timesteps)."""
        return original_samples + self.broadcast_sigma(sigmas, original_samples) * noise

    def training_target(
        self, original_samples: torch.Tensor, noise: torch.Tensor, sigmas: Sigma, prediction_type: str | None = None
    ) -> torch.Tensor:
        """The regression target of `F`: `(x0 - c_skip * x_noisy) / c_out` (`v` for v-prediction)."""
        c_skip, c_out, _, _ = self.precondition(sigmas, prediction_type)
        x_noisy = self.add_noise_at_sigmas(original_samples, noise, sigmas)
        c_skip, c_out = self.broadcast_sigma(c_skip, original_samples), self.broadcast_sigma(c_out, original_samples)
        return (original_samples - c_skip * x_noisy) / c_out

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, sigmas: Sigma) -> torch.Tensor:
        """The v-prediction target for clean `sample`, `noise` and `sigmas`, whatever `prediction_type` is."""
        return self.training_target(sample, noise, sigmas, "v_prediction")
