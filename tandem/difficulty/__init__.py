"""Difficulty estimation for serving: prompt-level estimators (router) and the hidden-state probe (prefill worker).

Training and evaluation live in `tandem.difficulty.training`; nothing here imports it at run time.
"""
