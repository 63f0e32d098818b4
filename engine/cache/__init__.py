"""Prefix caching: a radix tree of cached pages and its binding to the pool allocators."""

from pdpair.engine.cache.prefix_cache import PrefixCache, cache_unsupported
from pdpair.engine.cache.radix import Node, RadixTree

__all__ = ["Node", "PrefixCache", "RadixTree", "cache_unsupported"]
