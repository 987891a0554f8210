"""The cloud trainer: labels uploaded frames with a teacher, distills them into each device's
student (Adaptive Model Streaming), sends back quantized deltas, and evaluates the loop."""

import os

# torch's OpenMP threads spin between parallel regions by default; beside other busy processes
# (a broker, devices, the teacher) that spinning starves the threads it waits for, and a
# 0.6 s training phase took 8-24 s. Set before torch loads; an operator's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
