"""pdpair-router: the OpenAI-compatible front door over prefill and decode nodes."""

from pdpair.router.app import build_app
from pdpair.router.config import RouterConfig
from pdpair.router.local_cluster import LocalCluster

__all__ = ["LocalCluster", "RouterConfig", "build_app"]
