from pdpair.engine.config import EngineConfig
from pdpair.engine.engine import Engine
from pdpair.engine.events import ChunkEvent, GenerateOutput, SchedulerStats, StepEvent
from pdpair.engine.request import Request
from pdpair.engine.sampling import SamplingParams

__all__ = [
    "ChunkEvent", "Engine", "EngineConfig", "GenerateOutput", "Request", "SamplingParams", "SchedulerStats",
    "StepEvent",
]
