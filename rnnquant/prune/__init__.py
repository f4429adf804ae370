"""rnnquant.prune: configs (``--prune SPEC``) and the one verb ``prune``; algorithm math in ``masks``."""
from .apply import block_influence, prune, remove_channels
from .config import PruneConfig, parse_spec

__all__ = ["PruneConfig", "block_influence", "parse_spec", "prune", "remove_channels"]
