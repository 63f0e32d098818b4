from pdpair.kernels.mamba.conv import causal_conv1d_ref, conv_update, conv_update_ref
from pdpair.kernels.mamba.scan import mamba_scan, mamba_scan_ref
from pdpair.kernels.mamba.ssd import ssd_chunk_scan_ref
from pdpair.kernels.mamba.state_update import selective_state_update, selective_state_update_ref

__all__ = [
    "causal_conv1d_ref",
    "conv_update",
    "conv_update_ref",
    "mamba_scan",
    "mamba_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "ssd_chunk_scan_ref",
]
