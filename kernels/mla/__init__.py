from pdpair.kernels.mla.decode import mla_decode, mla_decode_ref
from pdpair.kernels.mla.indexer import (
    indexer_scores,
    indexer_scores_ref,
    indexer_topk,
    indexer_topk_ref,
)
from pdpair.kernels.mla.sparse import sparse_mla, sparse_mla_ref
from pdpair.kernels.mla.topk import row_topk, row_topk_ref

__all__ = [
    "indexer_scores",
    "indexer_scores_ref",
    "indexer_topk",
    "indexer_topk_ref",
    "mla_decode",
    "mla_decode_ref",
    "row_topk",
    "row_topk_ref",
    "sparse_mla",
    "sparse_mla_ref",
]
