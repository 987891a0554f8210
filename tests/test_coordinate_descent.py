"""CoordinateAdam against seed 002 Algorithm 2, transcribed independently in numpy."""

import numpy as np
import pytest
import torch

from cloud_trainer.ams.coordinate_descent import CoordinateAdam, Selection

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(4, 3, generator=g, requires_grad=True),
        torch.randn(5, generator=g, requires_grad=True),
        torch.randn(2, 2, 2, generator=g, requires_grad=True),
    ]


def _set_grads(params, rng):
    for p in params:
        p.grad = torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32))


class ReferenceAlgorithm2:
    """Lines 1-16 of Algorithm 2 over one flat float64 vector."""

    def __init__(self, w, gamma):
        self.w = w.astype(np.float64)
        self.m = np.zeros_like(self.w)
        self.v = np.zeros_like(self.w)
        self.u = np.zeros_like(self.w)
        self.i = 0
        self.gamma = gamma

    def phase(self, grads, first_mask=None):
        k = round(self.gamma * self.w.size)
        if first_mask is None:
            chosen = np.argsort(-np.abs(self.u), kind="stable")[:k]  # line 1
            b = np.zeros(self.w.size, bool)
            b[chosen] = True
        else:
            b = first_mask
        for g in grads:  # lines 6-14
            self.m = B1 * self.m + (1 - B1) * g
            self.v = B2 * self.v + (1 - B2) * g * g
            self.i += 1
            u = LR * np.sqrt(1 - B2**self.i) / (1 - B1**self.i) * self.m / np.sqrt(self.v + EPS)
            self.w = self.w - u * b
            self.u = u
        return b


def _flat(tensors):
    return np.concatenate([t.detach().numpy().ravel() for t in tensors]).astype(np.float64)


def test_three_phases_match_the_algorithm():
    params = _params()
    opt = CoordinateAdam(params, gamma=0.25, lr=LR, betas=(B1, B2), eps=EPS)
    ref = ReferenceAlgorithm2(_flat(params), gamma=0.25)
    rng = np.random.default_rng(1)
    for phase in range(3):
        mask = _flat(opt.begin_phase()).astype(bool)
        grads = []
        for _ in range(4):
            _set_grads(params, rng)
            grads.append(_flat([p.grad for p in params]))
            opt.step()
        ref_mask = ref.phase(grads, first_mask=mask if phase == 0 else None)
        np.testing.assert_array_equal(mask, ref_mask)
        np.testing.assert_allclose(_flat(params), ref.w, rtol=0, atol=1e-6)
        np.testing.assert_allclose(_flat(opt.m), ref.m, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(_flat(opt.v), ref.v, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(_flat(opt.u), ref.u, rtol=1e-4, atol=1e-9)
    assert opt.step_count == 12 and opt.phase == 3


def test_unmasked_parameters_stay_bit_identical_and_moments_move_everywhere():
    params = _params()
    before = [p.detach().clone() for p in params]
    opt = CoordinateAdam(params, gamma=0.1)
    mask = opt.begin_phase()
    rng = np.random.default_rng(2)
    for _ in range(20):
        _set_grads(params, rng)
        opt.step()
    for p, old, b, m, v in zip(params, before, mask, opt.m, opt.v, strict=True):
        assert torch.equal(p.detach()[~b], old[~b])  # bit for bit
        if b.any():
            assert (p.detach()[b] != old[b]).all()
        assert (m != 0).all() and (v > 0).all()  # moments updated for every parameter


def test_first_phase_is_random_then_gradient_guided():
    params = _params()
    opt = CoordinateAdam(params, gamma=0.2, seed=3)
    total = opt.numel
    first = _flat(opt.begin_phase()).astype(bool)
    assert first.sum() == round(0.2 * total)
    again = CoordinateAdam(_params(), gamma=0.2, seed=4)
    assert not np.array_equal(first, _flat(again.begin_phase()).astype(bool))
    rng = np.random.default_rng(5)
    _set_grads(params, rng)
    opt.step()
    second = _flat(opt.begin_phase()).astype(bool)
    expected = np.argsort(-np.abs(_flat(opt.u)))[: round(0.2 * total)]
    assert set(np.flatnonzero(second)) == set(expected)


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (Selection.FIRST, list(range(5))),
        (Selection.LAST, list(range(20, 25))),
        (Selection.FIRST_LAST, [0, 1, 22, 23, 24]),
    ],
)
def test_layer_position_strategies(selection, expected):
    opt = CoordinateAdam(_params(), gamma=0.2, selection=selection)
    for _ in range(2):
        assert list(np.flatnonzero(_flat(opt.begin_phase()))) == expected


def test_random_strategy_changes_every_phase():
    opt = CoordinateAdam(_params(), gamma=0.2, selection=Selection.RANDOM)
    masks = [_flat(opt.begin_phase()).astype(bool) for _ in range(3)]
    assert all(m.sum() == 5 for m in masks)
    assert not np.array_equal(masks[1], masks[2])


def test_state_round_trip_reproduces_the_trajectory():
    def run(opt, params, rng, phases):
        for _ in range(phases):
            opt.begin_phase()
            for _ in range(3):
                _set_grads(params, rng)
                opt.step()

    a_params, b_params = _params(), _params()
    a = CoordinateAdam(a_params, gamma=0.3)
    run(a, a_params, np.random.default_rng(6), 2)
    b = CoordinateAdam(b_params, gamma=0.3)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for pa, pb in zip(a_params, b_params, strict=True):
            pb.copy_(pa)
    run(a, a_params, np.random.default_rng(7), 2)
    run(b, b_params, np.random.default_rng(7), 2)
    for pa, pb in zip(a_params, b_params, strict=True):
        assert torch.equal(pa, pb)


def test_nan_in_an_unmasked_update_never_reaches_its_weight():
    params = _params()
    opt = CoordinateAdam(params, gamma=0.1)
    mask = opt.begin_phase()
    grads = [torch.ones_like(p) for p in params]
    frozen = next(
        (i, j) for i, b in enumerate(mask) for j in range(b.numel()) if not b.flatten()[j]
    )
    grads[frozen[0]].view(-1)[frozen[1]] = float("nan")
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    before = params[frozen[0]].detach().flatten()[frozen[1]].clone()
    opt.step()
    assert params[frozen[0]].detach().flatten()[frozen[1]] == before


def test_masked_training_reduces_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    opt = CoordinateAdam(list(model.parameters()), gamma=0.3, lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    first = loss_fn(model(x), y).item()
    for _ in range(10):
        opt.begin_phase()
        for _ in range(20):
            model.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    assert loss_fn(model(x), y).item() < 0.7 * first


def test_step_before_a_mask_is_an_error():
    with pytest.raises(RuntimeError):
        CoordinateAdam(_params()).step()
    with pytest.raises(ValueError):
        CoordinateAdam(_params(), gamma=0.0)
