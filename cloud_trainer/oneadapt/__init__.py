"""OneAdapt (seed 000): the uplink's encoding knobs adapted by gradient ascent on accuracy minus
λ·bandwidth, the accuracy gradient estimated as DNNGrad ⊗ InputGrad (§3.3). The trainer's
half: ``dnngrad`` (the teacher's output utility back-propagated to its input, per macroblock)."""
