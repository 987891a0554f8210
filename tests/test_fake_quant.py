"""The fused fake-quantisation functions against the straight-through compositions they replace
(issue 19): the same values and the same gradients, to the bit, at ties and outside the range."""

import pytest
import torch

from cloud_trainer.student.tflite.quantization import ActQuant, round_half_up, ste


def _values() -> torch.Tensor:
    """Values in output units: exact ties (k + 0.5), integers, both bounds and beyond them."""
    ties = torch.arange(-140, 140, dtype=torch.float32) + 0.5
    noise = torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 80
    edges = torch.tensor([-129.0, -128.0, -127.6, 126.5, 127.0, 127.49, 128.0, 0.0, -0.5])
    return torch.cat([ties, torch.arange(-140.0, 140.0), noise, edges])


def _grad_of(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    y = fn(x)
    weights = torch.linspace(-2.0, 3.0, y.numel()).reshape(y.shape)
    (y * weights).sum().backward()
    return y.detach(), x.grad


def _same(fast, reference, x: torch.Tensor) -> None:
    y_fast, g_fast = _grad_of(fast, x)
    y_ref, g_ref = _grad_of(reference, x)
    assert torch.equal(y_fast, y_ref)
    assert torch.equal(g_fast, g_ref)
    with torch.no_grad():  # the inference path computes the same values
        assert torch.equal(fast(x), y_ref)


GRID = ActQuant(scale=0.0235, zero_point=-5, qmin=-128, qmax=127)
RELU6 = ActQuant(scale=0.0235, zero_point=-128, qmin=-128, qmax=127)  # low bound at 0


@pytest.mark.parametrize("grid", [GRID, RELU6])
def test_requantize_is_the_clamped_straight_through_rounding(grid: ActQuant) -> None:
    low, high = grid.qmin - grid.zero_point, grid.qmax - grid.zero_point
    _same(
        grid.requantize,
        lambda v: ste(v, torch.round(v)).clamp(low, high),
        _values() + grid.zero_point,
    )


def test_requantize_with_a_multiplier_per_channel_is_the_product_requantized() -> None:
    x = _values()[:4000].reshape(2, 4, 25, 20) * 40
    multiplier = torch.tensor([0.011, 0.02, 0.0375, 0.9]).reshape(1, 4, 1, 1)
    low, high = GRID.qmin - GRID.zero_point, GRID.qmax - GRID.zero_point
    _same(
        lambda v: GRID.requantize(v, multiplier),
        lambda v: ste(v * multiplier, torch.round(v * multiplier)).clamp(low, high),
        x,
    )


def test_round_half_up_rounds_ties_up_and_passes_the_gradient_through() -> None:
    _same(round_half_up, lambda v: ste(v, torch.floor(v + 0.5)), _values())
    assert round_half_up(torch.tensor([-2.5, -0.5, 0.5, 2.5])).tolist() == [-2.0, 0.0, 1.0, 3.0]


def test_round_half_up_onto_a_grid_is_the_rounding_in_the_grids_units() -> None:
    _same(lambda v: round_half_up(v, 34), lambda v: ste(v, torch.floor(v + 0.5)) - 34, _values())


def test_quantize_snaps_real_values_into_the_grids_units_and_back() -> None:
    low, high = GRID.qmin - GRID.zero_point, GRID.qmax - GRID.zero_point
    integers = torch.round(_values())
    units = GRID.quantize(integers * GRID.scale)
    assert torch.equal(units, integers.clamp(low, high))
    assert torch.equal(GRID.quantize(GRID.real(units)), units)  # real values of the grid's own
    assert torch.equal(GRID.from_grid(GRID.to_grid(units)), GRID.real(units))
