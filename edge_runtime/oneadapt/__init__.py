"""OneAdapt on the device (seed 000): the knobs as a normalised vector (``knobs``), InputGrad by
re-encoding a sampled frame at perturbed knobs (``input_grad``), and the gradient-ascent step
of eq. 2 on discrete levels (§3.5). The trainer's half is ``cloud_trainer.oneadapt``."""
