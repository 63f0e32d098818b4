from pdpair.engine.memory.allocator import PageAllocator
from pdpair.engine.memory.kv_pool import FULL_KIND, SWA_KIND, KVPool, Region
from pdpair.engine.memory.mamba_pool import MambaPool
from pdpair.engine.memory.pool_set import ItemPool, PoolSet, SlotPool
from pdpair.engine.memory.req_to_token import ReqToTokenPool

__all__ = ["FULL_KIND", "SWA_KIND", "ItemPool", "KVPool", "MambaPool", "PageAllocator", "PoolSet", "Region",
           "ReqToTokenPool", "SlotPool"]
