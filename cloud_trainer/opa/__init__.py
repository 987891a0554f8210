"""OPA on the trainer (seed 004): the elastic student's file (``elastic``), built from the
device's student. The device's half, which reads that file, is ``edge_runtime.opa``."""
