"""rlexp as an installed package (issue 14 item 5).

A wheel built from the repository holds every module and every YAML file of ``conf/`` (as ``rlexp/conf``,
found with ``importlib.resources``); installed non-editable into a fresh virtual environment, it runs
``rlexp train`` and ``rlexp sweep --list`` from an empty directory, with the repository's source tree
out of reach. A user's own config directory on Hydra's search path adds recipes and sweeps.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fast_overrides import FAST
from rlexp.cli import _composition_error, main

ROOT = Path(__file__).resolve().parent.parent
SITE_PACKAGES = sysconfig.get_paths()["purelib"]  # this environment's packages (torch, lightning, ...)


def _copy_sources(dest: Path) -> Path:
    """What a wheel is built from (the working tree's files, without caches), copied so that the build's
    build/ and *.egg-info never land in the repository."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("rlexp", "conf", "sweeps"):
        shutil.copytree(ROOT / name, dest / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _fresh_venv(path: Path) -> Path:
    """A virtual environment without pip whose only extra entry on sys.path is this environment's
    site-packages (a path line in a .pth file: the editable install's own .pth there is NOT processed, so
    the repository's rlexp cannot be imported)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_rlexp_test_deps.pth").write_text(SITE_PACKAGES + "\n")
    return python


@pytest.mark.slow
def test_a_built_wheel_installed_in_a_fresh_venv_runs_from_an_empty_directory(tmp_path):
    src, dist, empty = _copy_sources(tmp_path / "src"), tmp_path / "dist", tmp_path / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True, timeout=180)
    (wheel,) = dist.glob("rlexp-*.whl")

    # the wheel holds every module, and the config tree with the sweeps as rlexp/conf
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(src).as_posix() for p in (src / "rlexp").rglob("*.py")}
    expected |= {"rlexp/" + p.relative_to(src).as_posix() for p in (src / "conf").rglob("*.yaml")}
    expected |= {f"rlexp/conf/sweeps/{p.name}" for p in (src / "sweeps").glob("*.yaml")}
    assert "rlexp/conf/config.yaml" in expected and "rlexp/conf/sweeps/ppo_gae.yaml" in expected
    assert not expected - names, (f"missing from the wheel: {sorted(expected - names)} (a new package goes in "
                                  f"[tool.setuptools] packages of pyproject.toml)")

    venv = tmp_path / "venv"
    python = _fresh_venv(venv)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=180)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    where = subprocess.run([str(python), "-c", "import rlexp, rlexp.resources as r; print(rlexp.__file__); "
                            "print(r.conf_dir())"], cwd=empty, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    module_file, conf = (Path(line) for line in where.stdout.split())
    assert module_file.is_relative_to(venv) and conf.is_relative_to(venv), where.stdout  # not the repository's
    assert conf.name == "conf" and (conf / "config.yaml").is_file()

    rlexp = str(venv / "bin" / "rlexp")  # the installed console script
    listed = subprocess.run([rlexp, "sweep", "--list"], cwd=empty, env=env, capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    for p in (ROOT / "sweeps").glob("*.yaml"):
        assert f"  {p.stem} " in listed.stdout, listed.stdout

    run = subprocess.run([rlexp, "train", *FAST, "tracking=none"], cwd=empty, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "(step 2)" in run.stderr + run.stdout, (run.stdout + run.stderr)[-3000:]
    (saved,) = empty.glob("outputs/*/*/.hydra/config.yaml")  # the run wrote its outputs where it was launched
    assert OmegaConf.load(saved).trainer.max_steps == 2


# ------------------------------------------------------------------------ a user's own config directory
def _user_conf(root: Path) -> None:
    """my_conf/algorithm/mine.yaml (GRPO with its own ε) and my_conf/sweeps/my_grid.yaml."""
    (root / "my_conf" / "algorithm").mkdir(parents=True)
    (root / "my_conf" / "sweeps").mkdir()
    (root / "my_conf" / "algorithm" / "mine.yaml").write_text(
        "defaults:\n  - grpo\n  - _self_\n# my recipe\nname: mine\n# ε of the clipped ratio\nclip_eps: 0.15\n")
    (root / "my_conf" / "sweeps" / "my_grid.yaml").write_text(
        "# @package _global_\n# my own grid over my recipe's ε\ndefaults:\n  - override /algorithm: mine\n"
        "hydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n      algorithm.clip_eps: 0.1,0.2\n")


SEARCHPATH = "hydra.searchpath=[file://./my_conf]"


def test_a_users_config_directory_on_the_search_path_composes_and_lists_its_sweeps(in_tmp, capsys):
    _user_conf(in_tmp)
    assert _composition_error([SEARCHPATH, "algorithm=mine"]) is None  # rlexp's pre-check sees the user's dir
    assert "algorithm/mine" in _composition_error(["algorithm=mine"])  # and only through the search path
    assert main(["sweep", "--list", SEARCHPATH]) == 0
    out = capsys.readouterr().out
    assert "my_grid" in out and "my own grid over my recipe's ε" in out and "ppo_gae" in out
    assert main(["sweep", "--list"]) == 0
    assert "my_grid" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_users_recipe_on_the_search_path_runs_through_rlexp_train(in_tmp):
    """`rlexp train hydra.searchpath=[file://./my_conf] algorithm=mine`: the recipe extends grpo."""
    _user_conf(in_tmp)
    assert main(["train", SEARCHPATH, "algorithm=mine", *FAST, "tracking=none"]) == 0
    (saved,) = in_tmp.glob("outputs/*/*/.hydra/config.yaml")
    algorithm = OmegaConf.to_container(OmegaConf.load(saved).algorithm)
    from rlexp.train import compose

    grpo = OmegaConf.to_container(compose(["algorithm=grpo", *FAST]).algorithm)
    assert algorithm == {**grpo, "name": "mine", "clip_eps": 0.15}
