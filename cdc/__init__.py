"""cdc-sync: change-data-capture sync engine for accounting ledgers."""

from .changes import Batch, Change
from .config import Config, Pair, load_config
from .errors import CdcError, ConfigError, RetryableError, RowError, SchemaError, SourceError, StateError, TargetError

__all__ = ["Batch", "CdcError", "Change", "Config", "ConfigError", "Pair", "RetryableError", "RowError",
           "SchemaError", "SourceError", "StateError", "TargetError", "load_config"]
