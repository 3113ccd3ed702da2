"""Config schemas and start-up validation (imports no torch: a bad value costs about a second)."""
from rlexp.config.validate import ConfigError, validate

__all__ = ["ConfigError", "validate"]
