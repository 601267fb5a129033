"""End-to-end tests on the emulated cluster (tests/cluster): install, serve, scale, faults."""
