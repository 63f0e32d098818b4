from pdpair.engine.attention.base import AttentionBackend
from pdpair.engine.attention.registry import create_backend

__all__ = ["AttentionBackend", "create_backend"]
