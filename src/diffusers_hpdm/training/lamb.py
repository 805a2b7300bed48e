"""LAMB whose trust ratios use whole-parameter norms when parameters are FSDP2 ``DTensor`` shards.

``pytorch_optimizer.Lamb`` (4.1) computes ``||w||`` and ``||update||`` with ``torch.linalg.norm`` / ``_foreach_norm``
and clamps them in place. On ``DTensor`` parameters those norms are ``_NormPartial`` tensors and the in-place clamp
raises (``aten.clamp_``: "in-place operations that require placement changes are not supported"), in both its
foreach and per-parameter paths; running it on the local shards instead (``to_local()``) would silently use
**shard** norms, so each process would scale its slice of a parameter by a different trust ratio.

`Lamb` is ``pytorch_optimizer.Lamb``'s default update (version 3 without second-moment bias correction, step size
``lr / (1 - beta1**t)``, decoupled weight decay, weight norm clamped to 10, ``trust = ||w|| / (||u|| + eps)``) with
the two norms computed as in `diffusers_hpdm.training.norms`: squares summed per shard in float64, all-reduced once
per step and parameter group. Every process applies the same trust ratio, and a sharded run matches a single-process
run bitwise (tested). Optimizer states are ``zeros_like(param)``, i.e. ``DTensor`` shards under FSDP2, as
``torch.distributed.checkpoint`` expects.

Where the trust ratio is 1 (groups with ``adam=True``, and parameters whose ``||w||`` or ``||u||`` is 0) the step is
Adam's, with both bias corrections: ``lr / (1 - beta1**t) * m / (sqrt(v / (1 - beta2**t)) + eps)``, as in
``torch.optim.AdamW`` (tested). Without the second correction those steps would be ``1 / sqrt(1 - beta2**t)`` too
large (31.6x at step 1, 7x at step 20 with beta2 0.999). Trust-ratio steps keep the reference's update: a constant
factor on ``u`` cancels in ``||w|| / ||u||`` (up to ``eps``). On plain tensors they differ from
``pytorch_optimizer.Lamb`` by float32 rounding only (norms accumulated in float64 here; its foreach path multiplies
by a reciprocal where this divides): a few ulps per step (tested).
"""

from __future__ import annotations

import math

import torch
from pytorch_optimizer import Lamb as _ReferenceLamb

from .norms import local as _local
from .norms import local_squared_norm, reduce_over_shards


class Lamb(_ReferenceLamb):
    r"""LAMB (You et al., 2020) as in ``pytorch_optimizer.Lamb``, correct for FSDP2-sharded parameters.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (the paper: 5e-3).
        betas: moment decay rates.
        weight_decay: decoupled weight decay (the paper: 0.01).
        weight_decouple: ``False`` adds ``weight_decay * w`` to the update instead (coupled).
        fixed_decay: do not scale the decoupled decay by the learning rate.
        grad_averaging: scale the new gradient by ``1 - beta1`` in the first moment.
        adam: trust ratio 1: Adam's bias-corrected update (what `lamb_param_groups` uses for biases, gains,
            zero-initialised and embedding parameters).
        eps: added to ``sqrt(v)`` and to the update norm.
        maximize: maximize the objective.
    """

    def __init__(
        self,
        params,
        lr: float = 5e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.01,
        weight_decouple: bool = True,
        fixed_decay: bool = False,
        grad_averaging: bool = True,
        adam: bool = False,
        eps: float = 1e-6,
        maximize: bool = False,
    ):
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            weight_decouple=weight_decouple,
            fixed_decay=fixed_decay,
            grad_averaging=grad_averaging,
            adam=adam,
            eps=eps,
            foreach=False,
            maximize=maximize,
        )

    def __str__(self) -> str:
        return "Lamb"

    def _moments_and_update(self, p: torch.Tensor, group: dict, beta3: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Local ``(w, u)``: moments and decoupled weight decay applied in place, ``u`` the (untrusted) update."""
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if len(state) == 0:
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        w, grad = _local(p), _local(p.grad)
        exp_avg, exp_avg_sq = _local(state["exp_avg"]), _local(state["exp_avg_sq"])
        if self.maximize:
            grad = -grad
        exp_avg.mul_(beta1).add_(grad, alpha=beta3)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        if group["weight_decay"] != 0.0 and group["weight_decouple"]:
            w.mul_(1.0 - group["weight_decay"] * (1.0 if group["fixed_decay"] else group["lr"]))
        return w, self._update(w, exp_avg, exp_avg_sq, group)

    @staticmethod
    def _update(w, exp_avg, exp_avg_sq, group, bias_correction2_sqrt: float = 1.0) -> torch.Tensor:
        """``m / (sqrt(v) / bias_correction2_sqrt + eps)``, plus ``weight_decay * w`` with coupled decay."""
        update = exp_avg_sq.sqrt()
        if bias_correction2_sqrt != 1.0:
            update.div_(bias_correction2_sqrt)
        update.add_(group["eps"])
        torch.div(exp_avg, update, out=update)
        if not group["weight_decouple"] and group["weight_decay"] > 0.0:
            update.add_(w, alpha=group["weight_decay"])
        return update

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            beta3 = 1.0 - beta1 if group["grad_averaging"] else 1.0
            step_size = group["lr"] / (1.0 - math.pow(beta1, group["step"]))
            bias_correction2_sqrt = math.sqrt(1.0 - math.pow(beta2, group["step"]))
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lamb does not support sparse gradients.")

            # 1. Moments and weight decay; squared norms of w and of the update, summed over shards (float64)
            sums = []
            for p in params:
                w, update = self._moments_and_update(p, group, beta3)
                sums.append(torch.stack([local_squared_norm(w), local_squared_norm(update)]))
            norms = reduce_over_shards(torch.stack(sums), params).sqrt()  # (n, 2)

            # 2. Trust ratio and update (recomputed from the moments: no extra buffer per parameter)
            for p, (weight_norm, update_norm) in zip(params, norms.to(params[0].dtype)):
                state = self.state[p]
                w, moments = _local(p), (_local(state["exp_avg"]), _local(state["exp_avg_sq"]))
                weight_norm = weight_norm.clamp(min=0, max=self.clamp)
                if group["adam"] or weight_norm == 0 or update_norm == 0:
                    # trust ratio 1: Adam's step, second moment bias-corrected too
                    w.add_(self._update(w, *moments, group, bias_correction2_sqrt), alpha=-step_size)
                else:
                    trust_ratio = weight_norm / (update_norm + group["eps"])
                    w.add_(self._update(w, *moments, group), alpha=-step_size * trust_ratio)
        return loss
