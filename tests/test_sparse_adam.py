"""Tests of the row-sparse (lazy) Adam and of the bank's sparse per-scene gradients (CPU, fast)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import pytest
import torch
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from nerfstudio_3dae.checkpoints import allow_nerfstudio_checkpoints
from nerfstudio_3dae.sparse_adam import ROW_STEP, RowSparseAdam, RowSparseAdamOptimizerConfig
from nerfstudio_3dae.triplanes import TriplaneBank

ROW_SHAPE = (3, 2, 4)


def _row_grad(rows: Sequence[int], num_rows: int, seed: int) -> torch.Tensor:
    """A sparse COO gradient [num_rows, *ROW_SHAPE] with random values on ``rows`` (repeats allowed)."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(len(rows), *ROW_SHAPE, generator=gen)
    return torch.sparse_coo_tensor(torch.tensor([list(rows)]), values, (num_rows, *ROW_SHAPE), check_invariants=True)


def _table(num_rows: int, seed: int = 0) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(num_rows, *ROW_SHAPE, generator=torch.Generator().manual_seed(seed)))


def test_touched_rows_follow_dense_adam_and_untouched_rows_stay_identical() -> None:
    num_rows, rows = 7, [5, 1, 3]
    table = _table(num_rows)
    initial = table.detach().clone()
    reference = torch.nn.Parameter(table.detach()[rows].clone())  # dense Adam on the touched rows only
    opt = RowSparseAdam([table], lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    ref_opt = torch.optim.Adam([reference], lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    for step in range(300):
        grad = _row_grad(rows, num_rows, seed=step)
        table.grad = grad
        reference.grad = grad.to_dense()[rows]
        opt.step()
        ref_opt.step()
    torch.testing.assert_close(table.detach()[rows], reference.detach(), atol=1e-6, rtol=0)
    state, ref_state = opt.state[table], ref_opt.state[reference]
    torch.testing.assert_close(state["exp_avg"][rows], ref_state["exp_avg"], atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(state["exp_avg_sq"][rows], ref_state["exp_avg_sq"], atol=1e-9, rtol=1e-5)
    untouched = [r for r in range(num_rows) if r not in rows]
    assert torch.equal(table.detach()[untouched], initial[untouched])
    assert not state["exp_avg"][untouched].any() and not state["exp_avg_sq"][untouched].any()
    assert state[ROW_STEP].tolist() == [300 if r in rows else 0 for r in range(num_rows)]
    assert state[ROW_STEP].dtype == torch.int64


def test_each_row_has_its_own_step_count() -> None:
    """Lazy semantics: a row's trajectory is dense Adam fed only the steps on which the row was touched."""
    num_rows = 4
    schedule = [[0, 1], [1], [0, 2], [2, 2, 1], [0], [1, 0], [2], [0, 1, 2]]
    table = _table(num_rows, seed=1)
    initial = table.detach().clone()
    opt = RowSparseAdam([table], lr=5e-2)
    per_row: Dict[int, List[torch.Tensor]] = {r: [] for r in range(num_rows)}
    for step, rows in enumerate(schedule):
        grad = _row_grad(rows, num_rows, seed=100 + step)
        table.grad = grad
        opt.step()
        dense = grad.to_dense()
        for r in set(rows):
            per_row[r].append(dense[r])
    counts = [len(per_row[r]) for r in range(num_rows)]
    assert opt.state[table][ROW_STEP].tolist() == counts == [5, 5, 4, 0]
    for r in range(num_rows):
        reference = torch.nn.Parameter(initial[r].clone())
        ref_opt = torch.optim.Adam([reference], lr=5e-2)
        for grad in per_row[r]:
            reference.grad = grad
            ref_opt.step()
        torch.testing.assert_close(table.detach()[r], reference.detach(), atol=1e-6, rtol=0)


def test_sparse_and_dense_gradients_give_the_same_update() -> None:
    num_rows = 6
    tables = [_table(num_rows, seed=2) for _ in range(2)]
    opts = [RowSparseAdam([t], lr=1e-2, eps=1e-15) for t in tables]
    for step, rows in enumerate([[0, 4], [4, 4, 2], [5], [0, 1, 2]]):
        grad = _row_grad(rows, num_rows, seed=200 + step)
        tables[0].grad, tables[1].grad = grad, grad.to_dense()
        for opt in opts:
            opt.step()
        assert opts[0].rows_updated == opts[1].rows_updated == len(set(rows))
    torch.testing.assert_close(tables[0], tables[1], atol=1e-7, rtol=0)
    for key in ("exp_avg", "exp_avg_sq", ROW_STEP):
        torch.testing.assert_close(opts[0].state[tables[0]][key], opts[1].state[tables[1]][key])


def test_rejects_weight_decay_and_bad_gradients() -> None:
    table = _table(3)
    with pytest.raises(ValueError, match="weight_decay"):
        RowSparseAdam([table], weight_decay=1e-4)
    with pytest.raises(ValueError, match="at least one dimension"):
        RowSparseAdam([torch.nn.Parameter(torch.zeros(()))])
    opt = RowSparseAdam([table])
    table.grad = torch.randn(3, *ROW_SHAPE).to_sparse(2)  # two sparse dimensions
    with pytest.raises(ValueError, match="one sparse"):
        opt.step()


def _run(steps: range, table: torch.nn.Parameter, optimizers: Optimizers) -> None:
    """Steps of a nerfstudio ``Optimizers`` (zero_grad, step, scheduler) on scheduled row gradients."""
    for step in steps:
        optimizers.zero_grad_all()
        table.grad = _row_grad([step % 5, (3 * step) % 5], 5, seed=300 + step)
        optimizers.optimizer_step_all()
        optimizers.scheduler_step_all(step)


def _nerfstudio_optimizers(table: torch.nn.Parameter) -> Optimizers:
    config = {
        "micro": {
            "optimizer": RowSparseAdamOptimizerConfig(lr=1e-2, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-3, max_steps=20),
        }
    }
    return Optimizers(config, {"micro": [table]})


def test_state_dict_round_trip_through_nerfstudio_optimizers(tmp_path: Path) -> None:
    straight = _table(5, seed=3)
    straight_opts = _nerfstudio_optimizers(straight)
    _run(range(12), straight, straight_opts)

    first = _table(5, seed=3)
    first_opts = _nerfstudio_optimizers(first)
    _run(range(6), first, first_opts)
    checkpoint = {
        "table": first.detach(),
        "optimizers": {k: v.state_dict() for k, v in first_opts.optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in first_opts.schedulers.items()},
    }
    for state in checkpoint["optimizers"]["micro"]["state"].values():  # the optimizer's own state: tensors only
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    torch.save(checkpoint, tmp_path / "step.ckpt")
    # nerfstudio's scheduler writes numpy learning rates; 3dae allow-lists numpy scalars (nerfstudio_3dae.checkpoints).
    # Not torch's safe_globals() context: leaving it removes those globals for the rest of the process, and later
    # tests (test_resume) then fail to load nerfstudio checkpoints.
    allow_nerfstudio_checkpoints()
    loaded = torch.load(tmp_path / "step.ckpt", weights_only=True)

    resumed = torch.nn.Parameter(loaded["table"].clone())
    resumed_opts = _nerfstudio_optimizers(resumed)
    resumed_opts.load_optimizers(loaded["optimizers"])
    resumed_opts.load_schedulers(loaded["schedulers"])
    state = resumed_opts.optimizers["micro"].state[resumed]
    assert state[ROW_STEP].dtype == torch.int64
    _run(range(6, 12), resumed, resumed_opts)

    assert torch.equal(resumed.detach(), straight.detach())
    final, expected = resumed_opts.optimizers["micro"], straight_opts.optimizers["micro"]
    assert final.param_groups[0]["lr"] == expected.param_groups[0]["lr"] < 1e-2
    for key in ("exp_avg", "exp_avg_sq", ROW_STEP):
        assert torch.equal(final.state[resumed][key], expected.state[straight][key])


def test_config_setup_passes_its_fields() -> None:
    opt = RowSparseAdamOptimizerConfig(lr=3e-3, eps=1e-12, betas=(0.8, 0.9)).setup([_table(2)])
    assert isinstance(opt, RowSparseAdam)
    assert opt.defaults == {"lr": 3e-3, "betas": (0.8, 0.9), "eps": 1e-12, "weight_decay": 0.0}


def _bank(num_scenes: int, sparse: bool) -> TriplaneBank:
    torch.manual_seed(4)
    return TriplaneBank(num_scenes, resolution=4, micro_channels=2, macro_channels=3, num_bases=2, sparse=sparse)


def test_sparse_bank_gives_sparse_scene_grads_and_dense_basis_grads() -> None:
    bank = _bank(6, sparse=True)
    planes = bank.planes(torch.tensor([4, 1, 4]))
    (planes * torch.randn_like(planes)).sum().backward()
    for param in (bank.micro, bank.weights, bank.bias):
        assert param.grad.is_sparse and param.grad.sparse_dim() == 1 and param.grad.shape == param.shape
        assert sorted(param.grad.coalesce().indices()[0].tolist()) == [1, 4]
    assert bank.bases.grad.layout == torch.strided

    dense = _bank(6, sparse=False)
    planes_dense = dense.planes(torch.tensor([4, 1, 4]))
    torch.testing.assert_close(planes_dense, planes.detach())


def _train_step(bank: TriplaneBank, optimizers: Sequence[torch.optim.Optimizer], ids: torch.Tensor) -> None:
    for opt in optimizers:
        opt.zero_grad()
    planes = bank.planes(ids)
    (planes.square().mean() + planes.mean()).backward()
    for opt in optimizers:
        opt.step()


def _sparse_optimizers(bank: TriplaneBank) -> List[torch.optim.Optimizer]:
    return [RowSparseAdam([bank.micro, bank.weights, bank.bias], lr=1e-2), torch.optim.Adam([bank.bases], lr=1e-2)]


def test_sparse_bank_training_matches_dense_gradients() -> None:
    banks = [_bank(5, sparse=True), _bank(5, sparse=False)]
    opts = [_sparse_optimizers(b) for b in banks]
    for step in range(5):
        ids = torch.tensor([step % 5, (step + 2) % 5])
        for bank, opt in zip(banks, opts, strict=True):
            _train_step(bank, opt, ids)
    for name, param in banks[0].named_parameters():
        torch.testing.assert_close(param, dict(banks[1].named_parameters())[name], atol=1e-6, rtol=0)


class _AllocationCounter(TorchDispatchMode):
    """Counts the elements of every tensor that an operation creates (outputs not aliasing ``existing``)."""

    def __init__(self, existing: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.existing = {t.untyped_storage().data_ptr() for t in existing}
        self.elements = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            if t.is_sparse:
                self.elements += t._nnz()
            elif t.untyped_storage().data_ptr() not in self.existing:
                self.elements += t.numel()
        return out


def _work_of_a_step(num_scenes: int, sparse: bool, make_optimizers: Callable) -> _AllocationCounter:
    """Elements created by one training step (forward, backward, zero_grad, step) after a warm-up step."""
    bank = _bank(num_scenes, sparse=sparse)
    optimizers = make_optimizers(bank)
    ids = torch.tensor([0, 3])
    _train_step(bank, optimizers, ids)  # allocates the optimizer state (once)
    existing = [p for p in bank.parameters()] + [t for o in optimizers for s in o.state.values() for t in s.values()]
    with _AllocationCounter(existing) as counter:
        _train_step(bank, optimizers, torch.tensor([2, 1]))
    return counter


def test_per_step_work_is_independent_of_the_number_of_scenes() -> None:
    small, large = (_work_of_a_step(n, True, _sparse_optimizers) for n in (10, 1000))
    assert small.elements == large.elements and small.ops == large.ops
    opt = RowSparseAdam([_table(1000)])
    opt.param_groups[0]["params"][0].grad = _row_grad([7, 9], 1000, seed=5)
    opt.step()
    assert opt.rows_updated == 2
    untouched = torch.ones(1000, dtype=torch.bool)
    untouched[[7, 9]] = False
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert not state["exp_avg"][untouched].any() and not state[ROW_STEP][untouched].any()

    def dense_adam(bank: TriplaneBank) -> List[torch.optim.Optimizer]:
        return [torch.optim.Adam(bank.parameters(), lr=1e-2)]

    dense_small, dense_large = (_work_of_a_step(n, False, dense_adam) for n in (10, 1000))
    assert dense_large.elements > 20 * dense_small.elements  # the counter does see O(N) work


def test_loads_the_state_of_dense_adam() -> None:
    """Resuming from a checkpoint of dense Adam: every row counts the dense step, and the next update matches."""
    dense_table, table = _table(4, seed=6), _table(4, seed=6)
    dense = torch.optim.Adam([dense_table], lr=1e-2)
    for step in range(3):
        dense_table.grad = _row_grad([0, 1, 2, 3], 4, seed=400 + step).to_dense()
        dense.step()
    table.data.copy_(dense_table.detach())
    opt = RowSparseAdam([table], lr=1e-2)
    opt.load_state_dict(copy.deepcopy(dense.state_dict()))  # as if read from a checkpoint: no shared tensors
    assert opt.state[table][ROW_STEP].tolist() == [3, 3, 3, 3]
    grad = _row_grad([0, 1, 2, 3], 4, seed=500)
    table.grad, dense_table.grad = grad, grad.to_dense()
    opt.step()
    dense.step()
    torch.testing.assert_close(table, dense_table, atol=1e-6, rtol=0)


def _reference_rows_update(table: torch.Tensor, state: Dict[str, torch.Tensor], rows: torch.Tensor, grad, group):
    """The update of :class:`RowSparseAdam` before its factors were tabulated: every factor computed per row, in
    float64, from the row's step count (the arithmetic the table must reproduce bit for bit)."""
    beta1, beta2 = group["betas"]
    m, v = state["exp_avg"][rows].clone(), state["exp_avg_sq"][rows].clone()
    t = (state[ROW_STEP][rows] + 1).to(torch.float64)
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    shape = (-1, *([1] * (grad.ndim - 1)))
    step_size = ((-(beta1**t) + 1).reciprocal() * group["lr"]).to(grad.dtype).reshape(shape)
    bias2_sqrt = (-(beta2**t) + 1).sqrt().to(grad.dtype).reshape(shape)
    denom = v.sqrt() / bias2_sqrt + group["eps"]
    return table[rows] - (m * step_size) / denom


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.6)])
def test_tabulated_factors_are_the_per_row_arithmetic_at_any_step_count(betas) -> None:
    """Rows at step counts from 0 to far past the table's end (where both corrections are 1.0) move exactly as the
    per-row float64 arithmetic moves them, with the learning rate changing between steps."""
    table = _table(5, seed=7)
    opt = RowSparseAdam([table], lr=1e-2, betas=betas, eps=1e-15)
    counts = torch.tensor([0, 3, 200, 40_000, 10**7])
    state = {"exp_avg": torch.rand(5, *ROW_SHAPE), "exp_avg_sq": torch.rand(5, *ROW_SHAPE), ROW_STEP: counts}
    opt.load_state_dict({"state": {0: state}, "param_groups": opt.state_dict()["param_groups"]})
    for step, rows in enumerate([[0, 1, 2, 3, 4], [1, 3], [0, 4]]):
        opt.param_groups[0]["lr"] = 1e-2 * 0.9**step
        grad = _row_grad(rows, 5, seed=600 + step)
        index, values = grad.coalesce().indices()[0], grad.coalesce().values()
        expected = _reference_rows_update(table.detach(), opt.state[table], index, values, opt.param_groups[0])
        table.grad = grad
        opt.step()
        assert torch.equal(table.detach()[index], expected)


def test_the_banks_gradients_stay_marked_coalesced_and_are_not_coalesced_again() -> None:
    """The bank hands its tables sparse gradients marked coalesced (its rows are gathered as leaves of the graph,
    :func:`~nerfstudio_3dae.triplanes.sparse_rows`: torch's accumulation, which drops the mark, never sees them), so
    the optimiser's step never coalesces (on a GPU coalescing reads the size back: a host sync per step). Gradients of
    two backward passes before a step are summed, as torch sums them."""
    bank = _bank(6, sparse=True)
    opt = RowSparseAdam([bank.micro, bank.weights, bank.bias], lr=1e-2)
    ids = torch.tensor([1, 4])
    planes = bank.planes(ids, distinct_sorted=True)
    planes.square().mean().backward()
    assert all(p.grad.is_coalesced() for p in (bank.micro, bank.weights, bank.bias))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert not [e.name for e in prof.events() if e.name == "aten::_coalesce"]
    opt.zero_grad()
    bank.planes(ids, distinct_sorted=True).sum().backward()
    once = bank.micro.grad.to_dense()
    bank.planes(ids, distinct_sorted=True).sum().backward()  # accumulated onto the first
    torch.testing.assert_close(bank.micro.grad.to_dense(), 2 * once)
    opt.step()
    assert opt.rows_updated == 3 * 2  # two rows of each of the three tables
