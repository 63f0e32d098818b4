from pdpair.kernels.attention.decode import (
    DecodeWorkspace,
    decode_attention,
    decode_attention_ref,
    decode_workspace,
    default_num_splits,
)
from pdpair.kernels.attention.extend import extend_attention, extend_attention_ref
from pdpair.kernels.attention.kv_indices import (
    build_kv_indices,
    build_kv_indices_ref,
    build_kv_indptr,
    derive_decode_metadata,
)
from pdpair.kernels.attention.store_kv import store_kv, store_kv_ref

__all__ = [
    "DecodeWorkspace",
    "build_kv_indices",
    "build_kv_indices_ref",
    "build_kv_indptr",
    "decode_attention",
    "decode_attention_ref",
    "decode_workspace",
    "default_num_splits",
    "derive_decode_metadata",
    "extend_attention",
    "extend_attention_ref",
    "store_kv",
    "store_kv_ref",
]
