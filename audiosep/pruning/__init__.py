"""SepPrune: structured channel pruning of separators (profile, gates, surgery, fine-tuning).

The model stays plain: gates are forward pre-hooks, surgery builds a new model of the same class
with per-layer widths in its ``init_args``, so pruned checkpoints load everywhere unchanged.
"""
