"""The on-device runtime: inference on every frame, sampling, H.264 uplink, model hot swap.

Slim by design: numpy, LiteRT, paho-mqtt and PyAV only; never torch or onnx.
"""
