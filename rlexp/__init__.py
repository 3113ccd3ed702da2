"""rlexp: run, sweep and compare RL post-training experiments on language models.

Layers (each imports only those below): ``core`` (pure torch math) and ``config`` → ``models``, ``tasks``,
``rollout`` → ``modules`` (LightningModules) → ``train``, ``cli``, ``tracking``, ``compare``, ``warmstart``;
tests/test_layers.py states the exact rule (and the imports allowed within a layer) and enforces it.
"""
__version__ = "0.1.0"
