"""The OmegaConf resolvers rlexp's config uses, registered when ``rlexp.config`` is imported (before Hydra
composes anything: ``rlexp train``, ``python -m rlexp``, ``rlexp.train.compose``, the DDP worker script).

``${rlexp_run_id:}`` is 8 random hex digits (32 bits), drawn once per composed config (``use_cache``:
every read of ``hydra.run.dir`` gives the same directory, and Hydra copies the cache to the jobs of a
multirun, which therefore share one ``hydra.sweep.dir``). It makes each run's output directory its own:
two runs started in the same second (``rlexp train seed=1 & rlexp train seed=2``) share
``${now:%H-%M-%S}`` but not the id (the chance that two draws collide is 2⁻³²).
"""
from __future__ import annotations

import uuid

from omegaconf import OmegaConf

RUN_ID_RESOLVER = "rlexp_run_id"


def run_id() -> str:
    """A fresh id for one run's output directory: 8 hex digits from ``uuid4`` (the OS's random source)."""
    return uuid.uuid4().hex[:8]


if not OmegaConf.has_resolver(RUN_ID_RESOLVER):
    OmegaConf.register_new_resolver(RUN_ID_RESOLVER, run_id, use_cache=True)
