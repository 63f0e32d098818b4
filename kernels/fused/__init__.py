from pdpair.kernels.fused.add_rmsnorm import add_rmsnorm, add_rmsnorm_ref
from pdpair.kernels.fused.embed_rope import embed_rope, embed_rope_ref
from pdpair.kernels.fused.qk_rope_store import qk_rope_store, qk_rope_store_ref
from pdpair.kernels.fused.silu_mul import silu_and_mul, silu_and_mul_ref

__all__ = [
    "add_rmsnorm",
    "add_rmsnorm_ref",
    "embed_rope",
    "embed_rope_ref",
    "qk_rope_store",
    "qk_rope_store_ref",
    "silu_and_mul",
    "silu_and_mul_ref",
]
