"""The cloud trainer: labels uploaded frames with a teacher, distills them into each device's
student (Adaptive Model Streaming), sends back quantized deltas, and evaluates the loop."""

import os

# torch's OpenMP threads spin between parallel regions before they sleep (libgomp: 300,000
# times by default). Beside other busy threads on the same cores (devices, a broker, the teacher)
# that spinning starves the threads it waits for: two devices' daemon test ran its phases 70 %
# slower. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) made a training step alone 1.5 x slower. A
# short spin keeps most of the speed without the starving (README, "Benchmark results"). Set
# before torch loads; an operator's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins (on a trainer machine
# of its own, GOMP_SPINCOUNT=300000 is libgomp's default). Only libgomp (torch's pip wheels)
# reads it; a torch on Intel's OpenMP waits as KMP_BLOCKTIME says.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
