from pdpair.engine.debug.aligner import ALIGNERS, Aligned, align
from pdpair.engine.debug.comparator import Report, TensorResult, compare
from pdpair.engine.debug.config import DumpConfig, parse_steps
from pdpair.engine.debug.dumper import DumpDirError, Dumper, check_writable
from pdpair.engine.debug.format import Manifest, StepRecord, read_runs
from pdpair.engine.debug.writer import DumpWriter

__all__ = [
    "ALIGNERS", "Aligned", "DumpConfig", "DumpDirError", "DumpWriter", "Dumper", "Manifest", "Report",
    "StepRecord", "TensorResult", "align", "check_writable", "compare", "parse_steps", "read_runs",
]
