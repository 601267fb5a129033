"""The Kubernetes manifests the operator renders for a TandemDeployment."""
