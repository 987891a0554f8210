"""OPA on the device (seed 004, "One-Predict-All"): the elastic student's sub-networks as the
model file declares them (``subnets``). The trainer builds the file (``cloud_trainer.opa``)."""
