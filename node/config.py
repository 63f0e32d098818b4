"""NodeConfig: the frozen configuration of one node daemon, built from the command line."""

from __future__ import annotations

import argparse
import os
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pdpair.transfer.engine import PROTOCOLS

from pdpair.logfmt import add_log_format_arg
from pdpair.tls import TlsFiles, add_tls_args, tls_from_args

if TYPE_CHECKING:
    from pdpair.engine.debug.config import DumpConfig

ROLES = ("prefill", "decode")
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class NodeConfig:
    role: str
    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = 0
    advertise_host: str = "127.0.0.1"
    device: str = "cpu"
    dtype: str | None = None
    page_size: int = 16
    max_pages: int | None = None
    mem_fraction: float | None = None
    chunk_size: int = 512
    attention_backend: str = "auto"
    disable_cuda_graph: bool = False
    disable_overlap_schedule: bool = False
    disable_fused_ops: bool = False
    prefill_attention: str = "auto"  # auto: SDPA for prefill without a cached prefix, Triton otherwise; triton
    transfer_protocol: str = "tcp"
    rdma_devices: str | None = None
    transfer_threads: int = 2
    metrics_port: int | None = None
    log_level: str = "INFO"
    log_format: str = "text"  # or json (pdpair.logfmt)
    max_queue: int = 256
    drain_timeout: float = 30.0
    quarantine_seconds: float = 70.0
    local_prefill_below: int = 0
    prealloc_timeout: float = 60.0
    prefill_timeout: float = 600.0
    node_id: str = ""
    tls: TlsFiles | None = None  # mutual TLS on the gRPC server and on the channels this node opens
    prefill_allow: str = ""  # decode: prefill nodes it may dial (see decode_node/trust.py); "" = loopback only
    dump: DumpConfig | None = None  # --dump-dir: tensor dumps for pdpair-compare
    tp_size: int = 1  # ranks of this node (tensor parallel)
    dp_size: int = 1  # DP-attention ranks (needs enable_dp_attention)
    enable_dp_attention: bool = False
    prefix_cache: bool = True  # --disable-prefix-cache turns it off

    def __post_init__(self) -> None:
        from pdpair.engine.distributed.topology import RankTopology

        RankTopology(self.tp_size, self.dp_size, self.enable_dp_attention)  # ValueError naming the sizes
        if self.enable_dp_attention and self.role == "prefill":
            raise ValueError(f"--enable-dp-attention (--dp-size {self.dp_size}): a prefill node runs attention "
                             "tensor-parallel only (prefill-only requests are not spread over DP ranks); use "
                             f"--tp-size {self.tp_size} without --dp-size / --enable-dp-attention")
        if self.tp_size > 1 and (self.dump is not None or self.mem_fraction is not None):
            raise ValueError("--dump-dir and --mem-fraction are not supported with --tp-size > 1 yet (use --max-pages)")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.page_size <= 0 or self.chunk_size <= 0:
            raise ValueError(f"page_size ({self.page_size}) and chunk_size ({self.chunk_size}) must be positive")
        if self.max_pages is not None and self.max_pages <= 0:
            raise ValueError(f"max_pages must be positive, got {self.max_pages}")
        if self.mem_fraction is not None and not 0.0 < self.mem_fraction <= 1.0:
            raise ValueError(f"mem_fraction must be in (0, 1], got {self.mem_fraction}")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"attention_backend must be auto, torch or triton, got {self.attention_backend!r}")
        if self.transfer_protocol not in PROTOCOLS:
            raise ValueError(f"transfer_protocol must be one of {PROTOCOLS}, got {self.transfer_protocol!r}")
        if not self.quarantine_seconds > 0:
            raise ValueError(f"quarantine_seconds must be positive, got {self.quarantine_seconds}")
        if self.max_queue <= 0 or self.local_prefill_below < 0:
            raise ValueError("max_queue must be positive and local_prefill_below non-negative")

    @property
    def rdma_device_list(self) -> list[str] | None:
        return [d for d in self.rdma_devices.split(",") if d] if self.rdma_devices else None


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by prefill-node and decode-node."""
    d = NodeConfig(role="decode")
    parser.add_argument("--model", default=d.model,
                        help="model name (default: the embedded SmolLM2-135M), a Hugging Face directory or a .gguf path")
    parser.add_argument("--host", default=d.host,
                        help=f"interface the gRPC and metrics servers bind (default: {d.host}, this machine only; "
                             "0.0.0.0 or the pod IP to serve other hosts, with mutual TLS or a NetworkPolicy)")
    parser.add_argument("--port", type=int, default=d.port, help="gRPC port (default: 0, pick a free one and log it)")
    parser.add_argument("--advertise-host", default=None,
                        help="address peers use to reach this node, also for Mooncake (default: the host name's "
                             "address, or 127.0.0.1 when --host is loopback)")
    parser.add_argument("--device", default=d.device, help="torch device: cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="model and KV dtype (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--page-size", type=int, default=d.page_size, help="tokens per KV page (default: 16)")
    mem = parser.add_mutually_exclusive_group()
    mem.add_argument("--max-pages", type=int, default=None, help="exact KV pool size in pages")
    mem.add_argument("--mem-fraction", type=float, default=None,
                     help="fraction of free device memory for the pools (default: the engine's)")
    parser.add_argument("--chunk-size", type=int, default=d.chunk_size,
                        help="chunked-prefill token budget per step (default: 512)")
    parser.add_argument("--attention-backend", default=d.attention_backend, choices=["auto", "torch", "triton"],
                        help="attention kernels (default: auto = triton on CUDA, torch elsewhere)")
    parser.add_argument("--disable-cuda-graph", action="store_true",
                        help="run decode eagerly on CUDA instead of replaying captured graphs (debugging; with "
                             "--tp-size > 1 every rank runs eagerly)")
    parser.add_argument("--disable-overlap-schedule", action="store_true",
                        help="CUDA: run every decode step serially (read its sampled tokens before scheduling the "
                             "next) instead of launching step k before reading step k-1's tokens so that the host "
                             "work overlaps the device's; outputs are the same, only speed changes (CPU always "
                             "runs serially; multi-rank nodes too)")
    parser.add_argument("--disable-fused-ops", action="store_true",
                        help="CUDA: run the unfused norm / rope / activation kernels instead of the fused ones "
                             "(more launches per step; for comparing outputs)")
    parser.add_argument("--prefill-attention", default=d.prefill_attention, choices=["auto", "triton"],
                        help="CUDA prefill attention: auto (default) runs chunks without a cached prefix and "
                             "without sliding-window layers through torch SDPA (cuDNN) and the rest through the "
                             "paged Triton kernel; triton runs every chunk through the Triton kernel")
    parser.add_argument("--disable-prefix-cache", action="store_true",
                        help="do not keep finished requests' KV pages for reuse. By default a radix cache over "
                             "token ids keeps them (evicting the least recently used when memory is short): a "
                             "prompt sharing whole pages with an earlier one (a system prompt, the previous "
                             "turns of a chat) is prefilled only after that prefix, and a decode node registers, "
                             "and receives, only the pages it does not hold. Models with sliding-window or "
                             "mamba layers, and nodes with --tp-size > 1, always run without it")
    parser.add_argument("--transfer-protocol", default=d.transfer_protocol, choices=list(PROTOCOLS),
                        help="Mooncake transport: tcp (default; through host memory), rdma (needs a NIC and "
                             "--rdma-devices), nvlink_intra (GPU to GPU inside one host through CUDA IPC: both "
                             "nodes on one machine, in one PID namespace, pools not in expandable segments)")
    parser.add_argument("--rdma-devices", default=None, help="comma-separated RDMA NICs, e.g. mlx5_0,mlx5_1")
    parser.add_argument("--transfer-threads", type=int, default=d.transfer_threads,
                        help="transfer worker threads (default: 2)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (default: off)")
    parser.add_argument("--log-level", default=d.log_level, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default: INFO)")
    add_log_format_arg(parser)
    parser.add_argument("--max-queue", type=int, default=d.max_queue,
                        help="requests admitted at once before answering RESOURCE_EXHAUSTED (default: 256)")
    parser.add_argument("--drain-timeout", type=float, default=d.drain_timeout,
                        help="seconds SIGTERM waits for in-flight requests and their responses before exiting; "
                             "calls still open then get 2 s more before they are cancelled (default: 30)")
    parser.add_argument("--quarantine-seconds", type=float, default=None,
                        help="hold the pages of a failed transfer this long before reuse (default: twice "
                             "MC_TRANSFER_TIMEOUT plus 10 s; a failed write may still land until then)")
    add_tls_args(parser)
    ranks = parser.add_argument_group("parallel ranks (one process per rank: NCCL on CUDA, gloo on CPU)")
    ranks.add_argument("--tp-size", type=int, default=d.tp_size,
                       help="tensor-parallel ranks: attention heads (by KV-head groups) and MLP split across this "
                            "many processes, one GPU each on CUDA. A prefill node pairs with decode nodes of the "
                            "same attention-TP size (each rank sends its heads' pages to the same-numbered decode "
                            "rank) (default: 1)")
    ranks.add_argument("--dp-size", type=int, default=d.dp_size,
                       help="data-parallel attention ranks, each with its own requests and KV pool; needs "
                            "--enable-dp-attention and divides --tp-size (attention-TP = tp / dp) (default: 1)")
    ranks.add_argument("--enable-dp-attention", action="store_true",
                       help="run attention data-parallel across --dp-size ranks while the MLP stays "
                            "tensor-parallel over all --tp-size ranks")
    dump = parser.add_argument_group("tensor dumps (debugging; compare two runs with pdpair-compare)")
    dump.add_argument("--dump-dir", default=None, metavar="DIR",
                      help="write named forward tensors and batch metadata to DIR/<run name>/ (default: off; "
                           "decode runs without CUDA graphs while on)")
    dump.add_argument("--dump-filter", default="", metavar="REGEX",
                      help="only tensor names matching, e.g. '^(embed|layers\\.[01]\\.|logits)' (default: all)")
    dump.add_argument("--dump-steps", default="", metavar="SPEC",
                      help="forward steps to dump, counted from 0: e.g. '0-9,20,40-' (default: all)")
    dump.add_argument("--dump-name", default=None, metavar="NAME",
                      help="run directory name under --dump-dir (default: <role>-<pid>)")


def _advertise(host: str, advertise: str | None) -> str:
    if advertise:
        return advertise
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    if host not in ("0.0.0.0", "::", ""):
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def config_from_args(role: str, args: argparse.Namespace) -> NodeConfig:
    from pdpair.transfer import default_hold_seconds, transfer_timeout_s

    advertise = _advertise(args.host, args.advertise_host)
    hold = args.quarantine_seconds
    if hold is None:
        hold = default_hold_seconds(transfer_timeout_s())
    extra = {}
    if role == "decode":
        extra = {"local_prefill_below": args.local_prefill_below, "prealloc_timeout": args.prealloc_timeout,
                 "prefill_allow": args.prefill_allow}
    from pdpair.engine.debug import DumpConfig, check_writable

    dump = DumpConfig.build(args.dump_dir, role, args.dump_filter, args.dump_steps, args.dump_name)
    if dump is not None:
        check_writable(dump)  # a clear usage error now rather than a failed engine start
    return NodeConfig(
        role=role, model=args.model, host=args.host, port=args.port, advertise_host=advertise,
        device=args.device, dtype=args.dtype, page_size=args.page_size, max_pages=args.max_pages,
        mem_fraction=args.mem_fraction, chunk_size=args.chunk_size,
        attention_backend=args.attention_backend, disable_cuda_graph=args.disable_cuda_graph,
        disable_overlap_schedule=args.disable_overlap_schedule,
        disable_fused_ops=args.disable_fused_ops, prefill_attention=args.prefill_attention,
        transfer_protocol=args.transfer_protocol,
        rdma_devices=args.rdma_devices, transfer_threads=args.transfer_threads, metrics_port=args.metrics_port,
        log_level=args.log_level, log_format=args.log_format, max_queue=args.max_queue,
        drain_timeout=args.drain_timeout, quarantine_seconds=hold, tls=tls_from_args(args),
        node_id=f"{role}-{advertise}-{os.getpid()}-{uuid.uuid4().hex[:8]}", dump=dump,
        tp_size=args.tp_size, dp_size=args.dp_size, enable_dp_attention=args.enable_dp_attention,
        prefix_cache=not args.disable_prefix_cache, **extra,
    )
