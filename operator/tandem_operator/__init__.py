"""Tandem's Kubernetes operator: reconciles TandemDeployments and scales their pools by phase load."""
