"""The cloud trainer: labels uploaded frames with a teacher, distills them into each device's
student (Adaptive Model Streaming), sends back quantized deltas, and evaluates the loop."""
