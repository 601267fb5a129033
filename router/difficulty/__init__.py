"""Difficulty estimation for routing: prompt-level estimators, the hidden-state probe, evaluation."""
