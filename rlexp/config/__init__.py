"""Config schemas and start-up validation (imports no torch: a bad value costs about a second)."""
from rlexp.config.validate import ConfigError, validate
from rlexp.config import resolvers  # noqa: F401  (registers ${rlexp_run_id:} before Hydra composes)

__all__ = ["ConfigError", "validate"]
