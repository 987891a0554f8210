"""Tools around the daemon: the demo, the benchmarks, the local broker, emulated devices and
the protocol monitor."""
