"""Tests of the helm chart, the CRD, the examples and the Dockerfile."""
