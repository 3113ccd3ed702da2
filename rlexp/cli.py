"""The ``rlexp`` command. Imports only what the chosen subcommand needs (``--help`` is instant).

    rlexp train [hydra overrides...]     one run (``-m`` for a multirun over comma lists)
    rlexp train --help                   Hydra's help: config groups and options
    python -m rlexp train ...            the same
"""
from __future__ import annotations

import sys

USAGE = """usage: rlexp <command> [args]

commands:
  train [overrides...]   run an experiment; Hydra overrides, e.g.
                           rlexp train algorithm.gamma=0.99 algorithm.lam=0.9 trainer.max_steps=50
                           rlexp train -m algorithm.clip_eps=0.1,0.2,0.3      (multirun)
                         `rlexp train --help` lists the config groups; `--cfg job` prints the config.

Results are recorded in MLflow (default: ./mlflow.db); browse them with
  mlflow ui --backend-store-uri sqlite:///mlflow.db
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        from rlexp.train import hydra_main

        saved = sys.argv
        sys.argv = ["rlexp train", *rest]  # Hydra parses sys.argv
        try:
            hydra_main()
        finally:
            sys.argv = saved
        return 0
    print(f"rlexp: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
