"""Coordinate descent with Adam: seed 002 Algorithm 2 (the gradient-guided method).

Each training phase n fixes a mask b_n of a γ fraction of all parameters before its K steps;
every step updates Adam's moments for *all* parameters (lines 9-12) but moves only the masked
ones (line 13). The mask of phase n is the top γ of |u_{n-1}|, the last full Adam update vector
of the previous phase (line 1); phase 1 picks it at random. Moments, step count and u carry
across phases; weights are never re-initialised.

The other selection strategies of seed 002 Table 3 (random, first layers, last layers, first
and last) are here too, for the ablation; "first" and "last" follow the parameters' order,
which for imported students is graph order.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch
from torch import Tensor


class Selection(StrEnum):
    GRADIENT = "gradient"  # top γ of |u_{n-1}| (Algorithm 2, line 1)
    RANDOM = "random"
    FIRST = "first"
    LAST = "last"
    FIRST_LAST = "first_last"


class CoordinateAdam:
    """Adam over a fixed parameter list, applying each phase's updates through a mask."""

    def __init__(
        self,
        params: Sequence[Tensor],
        *,
        gamma: float = 0.05,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        selection: Selection = Selection.GRADIENT,
        seed: int = 0,
    ) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ValueError("gamma must be in (0, 1]")
        self.params = list(params)
        self.gamma = gamma
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.selection = Selection(selection)
        self._generator = torch.Generator().manual_seed(seed)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.u = [torch.zeros_like(p) for p in self.params]  # u_{n-1}: the last Adam update
        self.step_count = 0  # i, Adam's global step
        self.phase = 0  # n, training phases started
        self.mask: list[Tensor] = []

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def begin_phase(self) -> list[Tensor]:
        """Lines 1-2: choose I_n and return the binary mask b_n (one bool tensor per param)."""
        self.phase += 1
        count = max(1, round(self.gamma * self.numel))
        flat = self._chosen_indices(count)
        chosen = torch.zeros(self.numel, dtype=torch.bool)
        chosen[flat] = True
        self.mask = [
            part.view_as(p).to(p.device)
            for part, p in zip(chosen.split(self._sizes()), self.params, strict=True)
        ]
        return self.mask

    @torch.no_grad()
    def step(self) -> None:
        """Lines 8-13 for the gradients now in ``p.grad`` (a missing gradient counts as zero)."""
        if not self.mask:
            raise RuntimeError("begin_phase() must choose the mask before the first step")
        self.step_count += 1
        i = self.step_count
        rate = self.lr * (1 - self.beta2**i) ** 0.5 / (1 - self.beta1**i)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        # torch's list ops: each the same arithmetic per tensor, ~100 tensors in a few calls
        torch._foreach_mul_(self.m, self.beta1)
        torch._foreach_add_(self.m, grads, alpha=1 - self.beta1)  # line 9
        torch._foreach_mul_(self.v, self.beta2)
        torch._foreach_addcmul_(self.v, grads, grads, value=1 - self.beta2)  # line 10
        # line 12, with ε inside the square root as the paper writes it
        denominators = torch._foreach_sqrt(torch._foreach_add(self.v, self.eps))
        self.u = torch._foreach_div(torch._foreach_mul(self.m, rate), denominators)
        for p, u, b in zip(self.params, self.u, self.mask, strict=True):
            # line 13: w ← w − u ⊙ b; where(), not u * b, so a NaN in u never reaches a frozen w
            p.sub_(u.where(b, 0.0))

    def _sizes(self) -> list[int]:
        return [p.numel() for p in self.params]

    def _chosen_indices(self, count: int) -> Tensor:
        n = self.numel
        if self.selection == Selection.FIRST:
            return torch.arange(count)
        if self.selection == Selection.LAST:
            return torch.arange(n - count, n)
        if self.selection == Selection.FIRST_LAST:
            head = count // 2
            return torch.cat([torch.arange(head), torch.arange(n - (count - head), n)])
        if self.selection == Selection.RANDOM or self.phase == 1:
            return torch.randperm(n, generator=self._generator)[:count]
        magnitude = torch.cat([u.detach().abs().flatten().cpu() for u in self.u])
        return torch.topk(magnitude, count, sorted=False).indices

    def state_dict(self) -> dict[str, object]:
        return {
            "m": [t.clone() for t in self.m],
            "v": [t.clone() for t in self.v],
            "u": [t.clone() for t in self.u],
            "mask": [t.clone() for t in self.mask],
            "step_count": self.step_count,
            "phase": self.phase,
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        for name in ("m", "v", "u"):
            saved = state[name]
            if [t.shape for t in saved] != [p.shape for p in self.params]:
                raise ValueError(f"optimizer state {name!r} does not fit these parameters")
            setattr(self, name, _on_devices(saved, self.params))
        self.mask = _on_devices(state["mask"], self.params) if state["mask"] else []
        self.step_count = int(state["step_count"])
        self.phase = int(state["phase"])
        self._generator.set_state(state["generator"])


def _on_devices(saved: list[Tensor], params: list[Tensor]) -> list[Tensor]:
    return [t.clone().to(p.device) for t, p in zip(saved, params, strict=True)]
