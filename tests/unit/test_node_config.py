"""Daemon command lines -> NodeConfig; --help of both daemons; wire conversions at the servicer edge."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pdpair.decode_node.main import build_parser as decode_parser
from pdpair.node.config import NodeConfig, config_from_args
from pdpair.node.convert import check_prompt, sampling_from_proto, sampling_to_proto
from pdpair.node.layout import layout_from_proto, layout_to_proto
from pdpair.prefill_node.main import build_parser as prefill_parser
from pdpair.proto import pdpair_pb2 as pb
from pdpair.transfer import MemoryLayout, MemoryRegion


def test_decode_flags_build_a_frozen_config():
    args = decode_parser().parse_args([
        "--host", "127.0.0.1", "--port", "5000", "--page-size", "32", "--max-pages", "64", "--chunk-size", "128",
        "--transfer-protocol", "rdma", "--rdma-devices", "mlx5_0,mlx5_1", "--metrics-port", "9100",
        "--local-prefill-below", "64", "--log-level", "DEBUG"])
    cfg = config_from_args("decode", args)
    assert (cfg.port, cfg.page_size, cfg.max_pages, cfg.chunk_size, cfg.local_prefill_below) == (5000, 32, 64, 128, 64)
    assert cfg.advertise_host == "127.0.0.1" and cfg.rdma_device_list == ["mlx5_0", "mlx5_1"]
    assert cfg.node_id.startswith("decode-127.0.0.1-")
    with pytest.raises(AttributeError):
        cfg.port = 1  # frozen


def test_prefill_defaults_and_advertise_host():
    cfg = config_from_args("prefill", prefill_parser().parse_args(["--advertise-host", "10.0.0.5"]))
    assert cfg.model == "smollm2-135m" and cfg.transfer_protocol == "tcp" and cfg.advertise_host == "10.0.0.5"
    assert cfg.max_pages is None and cfg.metrics_port is None and cfg.host == "127.0.0.1"  # loopback unless --host says otherwise
    assert cfg.quarantine_seconds > 30  # longer than Mooncake's default transfer timeout
    assert cfg.prefix_cache  # on unless --disable-prefix-cache
    for role, parser in (("prefill", prefill_parser), ("decode", decode_parser)):
        assert not config_from_args(role, parser().parse_args(["--disable-prefix-cache"])).prefix_cache


@pytest.mark.parametrize("argv", [["--max-pages", "4", "--mem-fraction", "0.5"], ["--transfer-protocol", "udp"],
                                  ["--dtype", "int8"]])
def test_bad_flags_are_rejected(argv):
    with pytest.raises(SystemExit):
        prefill_parser().parse_args(argv)


@pytest.mark.parametrize("over", [dict(role="router"), dict(page_size=0), dict(max_pages=0),
                                  dict(mem_fraction=1.5), dict(local_prefill_below=-1),
                                  dict(quarantine_seconds=0), dict(tp_size=0), dict(tp_size=2, dp_size=2),
                                  dict(tp_size=3, dp_size=2, enable_dp_attention=True),
                                  dict(role="prefill", tp_size=2, dp_size=2, enable_dp_attention=True),
                                  dict(tp_size=2, mem_fraction=0.5)])
def test_bad_config_values_raise(over):
    with pytest.raises(ValueError):
        NodeConfig(**{"role": "decode", **over})


def test_a_prefill_node_runs_tensor_parallel_ranks_but_refuses_dp_attention():
    assert NodeConfig(role="prefill", tp_size=2).tp_size == 2
    with pytest.raises(ValueError, match=r"--enable-dp-attention \(--dp-size 2\): a prefill node") as exc:
        NodeConfig(role="prefill", tp_size=2, dp_size=2, enable_dp_attention=True)
    assert "use --tp-size 2 without --dp-size" in str(exc.value)


def test_rank_flags():
    args = decode_parser().parse_args(["--tp-size", "4", "--dp-size", "2", "--enable-dp-attention"])
    cfg = config_from_args("decode", args)
    assert (cfg.tp_size, cfg.dp_size, cfg.enable_dp_attention) == (4, 2, True)
    cfg = config_from_args("decode", decode_parser().parse_args([]))
    assert (cfg.tp_size, cfg.dp_size, cfg.enable_dp_attention) == (1, 1, False)


@pytest.mark.parametrize("script", ["pdpair.prefill_node.main", "pdpair.decode_node.main"])
def test_help_describes_every_flag(script):
    out = subprocess.run([sys.executable, "-m", script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--model", "--host", "--port", "--advertise-host", "--device", "--dtype", "--page-size",
                 "--max-pages", "--mem-fraction", "--chunk-size", "--transfer-protocol", "--rdma-devices",
                 "--metrics-port", "--log-level", "--tls-cert", "--tls-key", "--tls-ca", "--tls-server-name",
                 "--tp-size", "--dp-size", "--enable-dp-attention", "--disable-overlap-schedule"):
        assert flag in out.stdout, flag
    assert ("--local-prefill-below" in out.stdout) == script.startswith("pdpair.decode")
    assert ("--prefill-allow" in out.stdout) == script.startswith("pdpair.decode")


def test_sampling_zero_values_mean_off_and_round_trip():
    sp = sampling_from_proto(pb.SamplingParams(max_new_tokens=5))
    assert sp.temperature == 0.0 and sp.top_p == 1.0 and sp.top_k == 0 and sp.seed is None
    msg = pb.SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, seed=0,
                            stop=["\n\n"], stop_token_ids=[2], ignore_eos=True)
    back = sampling_to_proto(sampling_from_proto(msg))
    assert back.HasField("seed") and back.seed == 0 and back == msg
    with pytest.raises(ValueError):
        sampling_from_proto(pb.SamplingParams(max_new_tokens=0))


def test_prompt_checks():
    check_prompt([1, 2, 3], vocab_size=10, context_length=3)
    for ids, match in [([], "empty"), ([10], "out of range"), ([1] * 4, "exceeds the context")]:
        with pytest.raises(ValueError, match=match):
            check_prompt(ids, vocab_size=10, context_length=3)


def test_layout_round_trips_through_proto():
    layout = MemoryLayout("n", "127.0.0.1:1", "tcp", 16, "fp", (MemoryRegion("kv", 1 << 40, 737280, 512, "float32"),))
    assert layout_from_proto(layout_to_proto(layout)) == layout
    with pytest.raises(ValueError):
        layout_from_proto(pb.MemoryLayout(node_id="n", page_size=0))


def test_kernel_route_flags_reach_the_engine_config():
    """--disable-fused-ops and --prefill-attention triton end up in the EngineConfig the node builds (the
    CUDA backend reads them; on CPU the config still carries them)."""
    from pdpair.node.runtime import load_engine

    plain = config_from_args("decode", decode_parser().parse_args(["--max-pages", "32"]))
    assert (plain.disable_fused_ops, plain.prefill_attention, plain.disable_overlap_schedule) == (False, "auto", False)
    cfg = config_from_args("decode", decode_parser().parse_args(
        ["--max-pages", "32", "--disable-fused-ops", "--prefill-attention", "triton", "--disable-overlap-schedule"]))
    assert cfg.disable_overlap_schedule
    engine = load_engine(cfg)
    assert (engine.config.fused_ops, engine.config.extend_sdpa) == (False, False)
    assert not engine.config.overlap_schedule and not engine.scheduler.overlap
    with pytest.raises(SystemExit):
        decode_parser().parse_args(["--prefill-attention", "sdpa"])
