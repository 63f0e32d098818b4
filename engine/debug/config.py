"""`DumpConfig`: where and what the tensor dumper writes; the `PDPAIR_DUMP_*` environment knobs in one place."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

ENV_DIR = "PDPAIR_DUMP_DIR"
ENV_FILTER = "PDPAIR_DUMP_FILTER"
ENV_STEPS = "PDPAIR_DUMP_STEPS"
ENV_NAME = "PDPAIR_DUMP_NAME"
ENV_CORRUPT_PAGE = "PDPAIR_TEST_CORRUPT_PAGE"  # test-only fault: "kind:index", see engine/debug/fault.py


def parse_steps(spec: str) -> tuple[tuple[int, int], ...]:
    """"0-3,7,10-" -> inclusive (lo, hi) ranges (hi -1: open); "" or "all" -> every step."""
    spec = spec.strip()
    if spec in ("", "all"):
        return ()
    ranges = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:(-)\s*(\d*))?\s*", part)
        if m is None:
            raise ValueError(f"dump steps {spec!r}: {part!r} is not N, N-M or N- (step numbers from 0)")
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else -1)
        if hi != -1 and hi < lo:
            raise ValueError(f"dump steps {spec!r}: range {part!r} ends before it starts")
        ranges.append((lo, hi))
    return tuple(ranges)


@dataclass(frozen=True)
class DumpConfig:
    """Dump every forward step matching `steps` (empty: all) and tensor names matching `filter` (regex,
    `re.search`) to `dir/run_name/`."""

    dir: str
    run_name: str
    filter: str = ""
    steps: tuple[tuple[int, int], ...] = field(default=())
    rank: int = 0
    role: str = "engine"  # recorded in the manifest

    def __post_init__(self) -> None:
        if not self.dir:
            raise ValueError("dump dir must not be empty")
        if not self.run_name or "/" in self.run_name or self.run_name in (".", ".."):
            raise ValueError(f"dump run name must be a plain directory name, got {self.run_name!r}")
        try:
            re.compile(self.filter)
        except re.error as exc:
            raise ValueError(f"dump filter {self.filter!r} is not a valid regex: {exc}") from None

    @property
    def run_dir(self) -> str:
        return os.path.join(self.dir, self.run_name)

    def wants_step(self, step: int) -> bool:
        return not self.steps or any(lo <= step and (hi == -1 or step <= hi) for lo, hi in self.steps)

    @classmethod
    def build(cls, dir: str | None, role: str, filter: str = "", steps: str = "",
              run_name: str | None = None) -> DumpConfig | None:
        """None when `dir` is unset; the run name defaults to `<role>-<pid>`."""
        if not dir:
            return None
        return cls(dir=dir, run_name=run_name or f"{role}-{os.getpid()}", filter=filter or "",
                   steps=parse_steps(steps or ""), role=role)

    @classmethod
    def from_env(cls, role: str = "engine") -> DumpConfig | None:
        """The offline engine's dump settings: `PDPAIR_DUMP_DIR` (unset: off), `_FILTER`, `_STEPS`, `_NAME`."""
        env = os.environ
        return cls.build(env.get(ENV_DIR), role, env.get(ENV_FILTER, ""), env.get(ENV_STEPS, ""),
                         env.get(ENV_NAME))


def corrupt_page_spec() -> tuple[str, int] | None:
    """`PDPAIR_TEST_CORRUPT_PAGE=kind:index` (test only) -> (kind, index); unset -> None."""
    raw = os.environ.get(ENV_CORRUPT_PAGE, "")
    if not raw:
        return None
    kind, _, index = raw.partition(":")
    if not kind or not index.isdigit():
        raise ValueError(f"{ENV_CORRUPT_PAGE}={raw!r}: expected kind:index, e.g. kv:0")
    return kind, int(index)
