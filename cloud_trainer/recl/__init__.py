"""RECL (seed 003 chapter 6): model reuse from an expert zoo shared by every device, selected by
a gating network and a safety check, and a training scheduler that gives the training slot to
the session that gains most per second of it.

- ``zoo``: the experts, stored as deltas from the base student, persisted and bounded;
- ``gating``: the network that predicts each expert's accuracy on a device's frames;
- ``selection``: the safety check among the gating network's top K, the device's model and
  its last retrained one;
- ``admission``: which retrained models join the zoo (α, the queue) and which leave it (η, q);
- ``scheduler``: Algorithm 4, the marginal-gain training scheduler.
"""
