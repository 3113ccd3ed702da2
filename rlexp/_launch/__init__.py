"""Entry scripts that launchers re-run (see rlexp_train.py)."""
