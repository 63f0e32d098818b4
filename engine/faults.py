"""Fault injection for the fault tests, read once from the environment (off unless set).

- PDPAIR_FAULT_POISON_TOKEN=T: a forward whose batch holds a request with token id T in its prompt raises,
  as a request that crashes the model would (the scheduler must fail that request alone).
- PDPAIR_FAULT_STEP_ERROR=1: every scheduler step raises outside any forward, as a broken engine would
  (the node must report NOT_SERVING and exit non-zero after a bounded number of failed steps).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Faults:
    poison_token: int | None = None
    step_error: bool = False

    @classmethod
    def from_env(cls) -> Faults:
        tok = os.environ.get("PDPAIR_FAULT_POISON_TOKEN", "").strip()
        return cls(poison_token=int(tok) if tok else None,
                   step_error=os.environ.get("PDPAIR_FAULT_STEP_ERROR", "") not in ("", "0"))


class InjectedFault(RuntimeError):
    """Raised by a fault injected through the environment."""
