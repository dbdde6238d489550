"""Training/evaluation engine.

``utils.engine.evaluator`` holds the one evaluation loop (single scale, multi-scale +
flip, sliding window, MPI reduction) used by utils/eval.py, utils/api.py and the
trainer's periodic validation. Submodules are imported explicitly
(``from utils.engine.evaluator import evaluate``); importing this package alone loads
nothing, so it stays cheap and never imports Jittor.
"""
