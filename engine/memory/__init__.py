from pdpair.engine.memory.allocator import PageAllocator
from pdpair.engine.memory.kv_pool import FULL_KIND, SWA_KIND, KVPool, Region
from pdpair.engine.memory.pool_set import ItemPool, PoolSet
from pdpair.engine.memory.req_to_token import ReqToTokenPool

__all__ = ["FULL_KIND", "SWA_KIND", "ItemPool", "KVPool", "PageAllocator", "PoolSet", "Region", "ReqToTokenPool"]
