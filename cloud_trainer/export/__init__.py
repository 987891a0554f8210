"""Export torch-defined students for the devices (SPEC §8, issue #7).

torch → ONNX (`onnx_export`; Jetson runs it through ONNX Runtime) → onnx2tf in its isolated
environment (`tflite_convert`) → float16 or full-integer int8 TFLite calibrated on real frames
(`calibration`) → `edgetpu_compiler` where installed (`edgetpu`). `pipeline.export_student`
runs one export and verifies it against the torch model on held-out frames (`verify`);
`release` turns a new export into the message a device swaps in; `command` is
``cloud-trainer export``; `bench` measures every format.

Nothing here is imported by the device packages: it needs torch and onnx.
"""
