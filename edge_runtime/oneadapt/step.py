"""One OneAdapt step (seed 000 §3.2-3.5), the same on the device and in the evaluation: the
InputGrad of the frame the trainer's DNNGrad was taken on, OutputGrad per knob, and eq. 2 on
the profile's knobs, each moving at most a level."""

from __future__ import annotations

from edge_runtime.frames import Frame
from edge_runtime.oneadapt.input_grad import Gradients, gradients
from edge_runtime.oneadapt.knobs import KnobSpace, ascend, within_a_level
from edge_runtime.profile import KnobsSection, OneAdaptSection
from shared_schema.gradient import GradientMap
from shared_schema.messages import EncoderKnobs


def step(
    config: OneAdaptSection,
    bounds: KnobsSection,
    frame: Frame,
    knobs: EncoderKnobs,
    grad: GradientMap,
    utility: float,
    fps: float,
) -> tuple[EncoderKnobs, Gradients]:
    """The knobs after one step from ``knobs``, and the gradients it took. Raises
    ``UnfitBounds`` where the profile's sides admit no upload size of ``frame``."""
    space = KnobSpace.of(config, bounds, (frame.width, frame.height))
    u = space.vector(knobs)
    g = gradients(frame, space, u, grad, utility, fps)
    target = ascend(u, g.acc, g.kbps, config.alpha, config.lam)
    return space.knobs(within_a_level(space, u, target)), g
