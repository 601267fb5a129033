"""Tests of the Kubernetes operator (against the kmock API emulator)."""
