"""Row-sparse ("lazy") Adam for per-scene parameter tables, and its nerfstudio optimizer config.

A training step touches only the scenes of its batch. With :class:`~nerfstudio_3dae.triplanes.TriplaneBank`
(``sparse=True``) the gradients of the per-scene tables (``micro``, ``weights``, ``bias``) are sparse COO tensors
whose single sparse dimension indexes scenes (the layout of ``F.embedding(..., sparse=True)``).
:class:`RowSparseAdam` updates only those rows: their parameter values, first and second moments and their own step
count. Untouched rows are not read or written, so the cost of a step is ``O(rows touched)``, independent of the
number of scenes, and a row touched on every step follows exactly the trajectory of dense :class:`torch.optim.Adam`.

Semantics (per parameter whose first dimension indexes rows):

* sparse gradient: the touched rows are the (coalesced) indices of the gradient; duplicated indices are summed;
* dense gradient: the touched rows are those whose gradient row is not all zero, so a dense gradient that is zero
  outside the batch gives the same update as the equivalent sparse one. A row whose true gradient is exactly zero is
  therefore skipped (its moments do not decay), unlike dense Adam; use :class:`torch.optim.Adam` for shared
  parameters where that matters.

State per parameter: ``exp_avg`` and ``exp_avg_sq`` (shape of the parameter) and ``row_step`` (``[rows]`` int64,
number of updates of each row). They are allocated (zero) on the first step that gives the parameter a gradient.
Only tensors and python numbers are stored, so ``torch.load(weights_only=True)`` reads the state dict.

:class:`FusedAdamOptimizerConfig` is the methods' dense Adam for the shared parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type, Union

import torch
from nerfstudio.engine.optimizers import AdamOptimizerConfig, OptimizerConfig
from torch import Tensor

ROW_STEP = "row_step"
"""State key of the per-row step counts (not ``step``: torch's loader special-cases that key)."""


def touched_rows(grad: Tensor) -> Tuple[Tensor, Tensor]:
    """``(rows [k] int64, values [k, *row_shape])`` of a row-sparse or dense gradient.

    Sparse COO gradients must have exactly one sparse dimension (the rows); they are coalesced (duplicated rows
    summed; nothing to do for a gradient marked coalesced, as the bank's are, :func:`~nerfstudio_3dae.triplanes.
    sparse_rows`: on a GPU, coalescing reads the new size back). For a dense gradient the rows whose entries are not
    all zero are returned.
    """
    if grad.is_sparse:
        grad = grad.coalesce()
        indices = grad._indices()  # [sparse dimensions, k]
        if indices.shape[0] != 1:
            raise ValueError(f"RowSparseAdam needs gradients with one sparse (row) dimension, got {indices.shape[0]}")
        return indices[0], grad._values()
    if grad.layout != torch.strided:
        raise ValueError(f"RowSparseAdam supports sparse COO or dense gradients, got layout {grad.layout}")
    nonzero = grad.reshape(grad.shape[0], -1).ne(0).any(dim=1)
    rows = nonzero.nonzero().reshape(-1)
    return rows, grad.index_select(0, rows)


def converged_step(beta1: float, beta2: float) -> int:
    """A step count from which both of Adam's bias corrections ``1 − βᵗ`` are 1.0 in float64 (with a margin for the
    last bit of ``pow``): factors tabulated up to it hold for every later step."""
    steps = []
    for beta in (beta1, beta2):
        t = 1 if beta <= 0.0 else max(1, math.ceil(math.log(2.0**-54) / math.log(beta)) - 8)
        while beta > 0.0 and 1.0 - beta**t != 1.0:
            t += 1
        steps.append(t)
    return max(steps) + 64


class _Factors:
    """Adam's per-row factors of one parameter group by step count ``t``: ``step_size[t] = lr / (1 − β₁ᵗ)`` and
    ``bias2_sqrt[t] = √(1 − β₂ᵗ)``, computed in float64 as :class:`RowSparseAdam` always computed them and rounded to
    the values' dtype; a step looks its rows' factors up instead of computing them.

    The table covers every step count a row can have reached (the host bounds it: one more per optimiser step), grown
    by doubling, and stops growing once both corrections are 1.0 (later steps share its last entry); the step sizes
    are remade when the learning rate changes (a scheduler: every step)."""

    def __init__(self, betas: Tuple[float, float], dtype: torch.dtype, device: torch.device) -> None:
        self.betas = betas
        self.dtype = dtype
        self.device = device
        self.converged = converged_step(*betas)
        self.length = 0
        self.lr: Optional[float] = None
        self.reciprocal_bias1 = torch.empty(0, dtype=torch.float64, device=device)
        self.bias2_sqrt = torch.empty(0, dtype=dtype, device=device)
        self.step_size = torch.empty(0, dtype=dtype, device=device)

    def cover(self, lr: float, bound: int) -> None:
        """Cover the step counts up to ``bound`` at learning rate ``lr`` (remade only when either needs it)."""
        needed = min(bound + 1, self.converged)
        if needed > self.length:
            self.length = min(max(64, 1 << (needed - 1).bit_length()), self.converged)
            t = torch.arange(self.length, dtype=torch.float64, device=self.device)
            beta1, beta2 = self.betas
            self.reciprocal_bias1 = torch.pow(beta1, t).neg().add(1.0).reciprocal()
            self.bias2_sqrt = torch.pow(beta2, t).neg().add(1.0).sqrt().to(self.dtype)
            self.lr = None
        if lr != self.lr:
            self.step_size = (self.reciprocal_bias1 * lr).to(self.dtype)
            self.lr = lr


class RowSparseAdam(torch.optim.Optimizer):
    """Adam with lazy row-wise updates and per-row step counts (see the module docstring).

    Args:
        params: parameters (or parameter groups) whose first dimension indexes rows (scenes); at least 1-D.
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and of its square.
        eps: term added to the denominator.
        weight_decay: must be 0 (decay of untouched rows has no lazy equivalent).
    """

    def __init__(
        self,
        params: Iterable[Union[Tensor, Dict[str, Any]]],
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"RowSparseAdam: invalid learning rate {lr}")
        if eps < 0.0:
            raise ValueError(f"RowSparseAdam: invalid eps {eps}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"RowSparseAdam: betas must be two numbers in [0, 1), got {betas}")
        if weight_decay != 0:
            raise ValueError(f"RowSparseAdam supports weight_decay=0 only, got {weight_decay}")
        defaults = {"lr": lr, "betas": (float(betas[0]), float(betas[1])), "eps": eps, "weight_decay": 0.0}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim == 0:
                    raise ValueError("RowSparseAdam needs parameters of at least one dimension (rows first)")
        self.rows_updated: int = 0
        """Rows updated by the last :meth:`step`, summed over parameters (a work counter for tests and benchmarks)."""
        self._steps_bound = 0
        """No row has been updated more often than this (the host's bound: one more per :meth:`step`)."""
        self._factors: Dict[Tuple[int, torch.dtype, torch.device], _Factors] = {}
        """The factor table of each parameter group (and dtype and device)."""
        self._step_views: Dict[int, Tuple[Tensor, Tensor]] = {}
        """By parameter id: its row step counts and a ``[N, 1, ...]`` view of them (made once, not saved)."""

    def state_for(self, p: Tensor) -> Dict[str, Tensor]:
        """The state of ``p``, allocated with zeros on first use."""
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state[ROW_STEP] = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
        return state

    def _step_view(self, p: Tensor, state: Dict[str, Tensor]) -> Tensor:
        """``p``'s row step counts viewed as ``[N, 1, ...]`` (``p``'s dimensions): gathered rows of it broadcast against
        the rows' values (the view is remade only when the state's tensor was replaced, e.g. by a load)."""
        cached = self._step_views.get(id(p))
        if cached is None or cached[0] is not state[ROW_STEP]:
            counts = state[ROW_STEP]
            cached = self._step_views[id(p)] = (counts, counts.view(-1, *([1] * (p.ndim - 1))))
        return cached[1]

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Update the touched rows of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.rows_updated = 0
        self._steps_bound += 1
        for index, group in enumerate(self.param_groups):
            work = []  # (parameter, its state, touched rows, their gradient)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.shape != p.shape:
                    raise ValueError(f"gradient shape {tuple(p.grad.shape)} != parameter shape {tuple(p.shape)}")
                rows, grad = touched_rows(p.grad)
                if rows.numel() == 0:
                    continue
                work.append((p, self.state_for(p), rows, grad if grad.dtype == p.dtype else grad.to(p.dtype)))
                self.rows_updated += int(rows.numel())
            if work:
                self._update_rows(work, group, self._factors_of(index, group, work[0][0]))
        return loss

    def _factors_of(self, index: int, group: Dict[str, Any], param: Tensor) -> _Factors:
        """The factor table of parameter group ``index``, covering this step."""
        betas = (float(group["betas"][0]), float(group["betas"][1]))
        key = (index, param.dtype, param.device)
        factors = self._factors.get(key)
        if factors is None or factors.betas != betas:
            factors = self._factors[key] = _Factors(betas, param.dtype, param.device)
        factors.cover(float(group["lr"]), self._steps_bound)
        return factors

    def _update_rows(
        self, work: List[Tuple[Tensor, Dict[str, Tensor], Tensor, Tensor]], group: Dict[str, Any], factors: _Factors
    ) -> None:
        """One Adam update of the touched rows of each parameter of a group, in the operation order of
        ``torch.optim.Adam`` (the arithmetic of all the group's parameters batched: ``torch._foreach_*``; the per-row
        factors looked up by the rows' step counts, gathered ``[k, 1, ...]`` to broadcast against their values)."""
        beta1, beta2 = group["betas"]
        params, states, rows, grads = (list(x) for x in zip(*work, strict=True))
        exp_avg = [s["exp_avg"].index_select(0, r) for s, r in zip(states, rows, strict=True)]
        exp_avg_sq = [s["exp_avg_sq"].index_select(0, r) for s, r in zip(states, rows, strict=True)]
        views = [self._step_view(p, s) for p, s in zip(params, states, strict=True)]
        steps = torch._foreach_add([v.index_select(0, r) for v, r in zip(views, rows, strict=True)], 1)
        torch._foreach_lerp_(exp_avg, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)
        at = torch._foreach_clamp_max(steps, factors.length - 1)  # beyond the table: its last (converged) entry
        step_size = [torch.take(factors.step_size, t) for t in at]
        bias2_sqrt = [torch.take(factors.bias2_sqrt, t) for t in at]
        denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(exp_avg_sq), bias2_sqrt), float(group["eps"]))
        update = torch._foreach_div(torch._foreach_mul(exp_avg, step_size), denom)
        for p, s, v, r, u, m, m2, t in zip(
            params, states, views, rows, update, exp_avg, exp_avg_sq, steps, strict=True
        ):
            p.index_add_(0, r, u, alpha=-1)  # distinct rows: p[r] − u
            s["exp_avg"].index_copy_(0, r, m)
            s["exp_avg_sq"].index_copy_(0, r, m2)
            v.index_copy_(0, r, t)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state dict; the per-row step counts keep their int64 type (torch would cast them to float).

        The state of a dense ``torch.optim.Adam`` (a scalar ``step``) loads too: every row then counts ``step``
        updates, which is what dense Adam did to every row.
        """
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        row_steps = {i: s.get(ROW_STEP, s.get("step")) for i, s in state_dict["state"].items()}
        stripped = {
            "state": {
                i: {k: v for k, v in s.items() if k not in (ROW_STEP, "step")} for i, s in state_dict["state"].items()
            },  # fmt: skip
            "param_groups": state_dict["param_groups"],
        }
        super().load_state_dict(stripped)
        params: List[Tensor] = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            steps = row_steps.get(saved_id)
            if steps is None:
                continue
            steps = torch.as_tensor(steps).to(device=p.device, dtype=torch.int64)
            self.state[p][ROW_STEP] = steps.expand(p.shape[0]).clone() if steps.ndim == 0 else steps
            if steps.numel():  # read once here, so that no training step has to
                self._steps_bound = max(self._steps_bound, int(steps.max()))


@dataclass
class RowSparseAdamOptimizerConfig(OptimizerConfig):
    """:class:`RowSparseAdam` for per-scene tables (``micro``, ``mixing``): per-step cost independent of the scenes."""

    _target: Type = field(default_factory=lambda: RowSparseAdam)
    """The optimizer class."""
    lr: float = 0.0005
    """Learning rate."""
    eps: float = 1e-15
    """Term added to Adam's denominator."""
    betas: Tuple[float, float] = (0.9, 0.999)
    """Coefficients of the running averages of the gradient and of its square."""
    weight_decay: float = 0.0
    """Must be 0: weight decay of untouched rows has no lazy equivalent."""


@dataclass
class FusedAdamOptimizerConfig(AdamOptimizerConfig):
    """``torch.optim.Adam`` for shared parameters (bases, MLP, autoencoder), with its fused implementation: one
    operator per parameter group and step instead of about ten per tensor (and on a GPU no read of the step count)."""

    _target: Type = field(default_factory=lambda: torch.optim.Adam)
    """The optimizer class."""
    fused: Optional[bool] = True
    """Use the fused kernel (CPU and CUDA float parameters). None: torch's default (foreach on CUDA, per tensor on the
    CPU)."""
