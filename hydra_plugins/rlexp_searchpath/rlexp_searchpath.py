"""Hydra search-path plugin: makes the repository's ``sweeps/`` folder the config group ``sweeps``
(``rlexp train -m +sweeps=ppo_gae``) — for rlexp's own config only, never for other Hydra apps."""
from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

ROOT = Path(__file__).resolve().parents[2]


class RlexpSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        conf = f"file://{ROOT / 'conf'}"
        if any(p.path == str(ROOT / "conf") or p.path == conf for p in search_path.get_path()):
            search_path.append(provider="rlexp-sweeps", path=f"file://{ROOT}")
