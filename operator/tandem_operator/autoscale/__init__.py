"""Phase-load autoscaling of the worker pools: metrics sources, the policy loop and the scaler."""
