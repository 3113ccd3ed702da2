"""rlexp: run, sweep and compare RL post-training experiments on language models.

Layers (each imports only those below): ``core`` (pure torch math) → ``models``, ``tasks``,
``rollout`` → ``modules`` (LightningModules) → ``train``, ``cli``, ``tracking``, ``warmstart``.
"""
__version__ = "0.1.0"
