"""Import a quantized TFLite flatbuffer as a trainable torch module.

Devices run an int8/uint8 TFLite student. The trainer rebuilds that graph op by op in torch so it
can fine-tune the very network the device runs: constant weights and biases become float "master"
parameters, and in fake-quant mode every weight and every activation is snapped to the frozen
quantization grid stored in the file, with straight-through gradients, so the forward pass
emulates the integer kernels. `quantized_weights` writes the master weights back at the same
frozen scales, in the file's storage dtype and layout, ready to be patched into the flatbuffer's
weight buffers without a converter.

Layouts: `TFLiteStudent.forward` takes an NHWC batch (the layout of the TFLite input tensor and of
decoded video frames) and returns NCHW logits (the layout torch losses expect).

Fake-quant arithmetic follows LiteRT's default CPU path, where the XNNPACK delegate runs the uint8
ops: convolutions accumulate exact integers and requantize with a float32 multiplier rounded half
to even, ADD uses XNNPACK's 21-bit fixed-point multipliers and uint8 QUANTIZE its 8-bit one, and
average pooling and bilinear resizing round half up on the integer grid like TFLite's kernels,
and MEAN rounds its exact sum once.
With the pinned LiteRT this reproduces every intermediate tensor of the Coral DeepLab models bit
for bit; LiteRT's reference kernels (no XNNPACK) round a few ties differently.

Modules: `tables` (TFLite enums and layouts in torch terms), `quantization` (frozen grids,
trainable constants), `ops` and `resize` (the op modules), `graph` (the model read through
`shared_schema.tflite_file`, which also reads and patches it for updates), `builders` (one per
op), `student` (the module, the import, the write-back). The public names are
`cloud_trainer.student`'s.
"""
