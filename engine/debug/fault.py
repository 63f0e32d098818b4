"""Test-only fault: flip bytes of one transferred page on the decode side (`PDPAIR_TEST_CORRUPT_PAGE`)."""

from __future__ import annotations

import logging

import torch
from pdpair.engine.debug.config import corrupt_page_spec

logger = logging.getLogger(__name__)

_SPEC = corrupt_page_spec()  # read once: the check below is free when the variable is unset


def corrupt_transferred(pools, items: dict) -> None:
    """If `PDPAIR_TEST_CORRUPT_PAGE=kind:index` is set, XOR 0x80 into every byte of the request's
    index-th item of that kind (every layer's K and V of one KV page) after its transfer landed."""
    if _SPEC is None:
        return
    kind, index = _SPEC
    ids = items.get(kind)
    if ids is None or index >= len(ids):
        logger.warning("test corruption %s:%d: the request has no such item", kind, index)
        return
    item = int(ids[index])
    page = pools.pool(kind).buffer[item]
    page.view(torch.uint8).bitwise_xor_(0x80)
    logger.warning("test corruption: flipped %d bytes of %s item %d", page.nbytes, kind, item)
