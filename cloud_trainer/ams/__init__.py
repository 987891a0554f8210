"""Adaptive Model Streaming (seed 002): the training phase, its masked optimizer and the
adaptive sampling and training rates."""
