"""rlexp's config tree; installed as the package ``rlexp.conf`` (see pyproject.toml and rlexp/resources.py).

Holds no code. It makes the directory a package that setuptools installs with its YAML as package data,
and it is what rlexp/resources.py recognises the tree by. Hydra reads only the YAML files.
"""
