from pdpair.engine.distributed.dp_plan import GatherInfo, GatherMode, StepPlan, need_idle_batch, plan_step
from pdpair.engine.distributed.groups import (
    ProcessGroups,
    all_gather_rows,
    all_reduce,
    host_rendezvous,
    init_groups,
    join_rendezvous,
)
from pdpair.engine.distributed.launcher import RankGroup
from pdpair.engine.distributed.processes import RankDied
from pdpair.engine.distributed.rank_main import RankSpec
from pdpair.engine.distributed.symm_mem import SymmetricBuffers
from pdpair.engine.distributed.topology import RankTopology

__all__ = [
    "GatherInfo", "GatherMode", "ProcessGroups", "RankDied", "RankGroup", "RankSpec", "RankTopology", "StepPlan",
    "SymmetricBuffers", "all_gather_rows", "all_reduce", "host_rendezvous", "init_groups", "join_rendezvous",
    "need_idle_batch", "plan_step",
]
