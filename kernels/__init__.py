from pdpair.kernels.triton_utils import HAS_TRITON

__all__ = ["HAS_TRITON"]
