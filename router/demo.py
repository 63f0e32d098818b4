"""`make demo`: prefill-node + decode-node + pdpair-router on loopback, one streamed chat request.

Prints the answer as it streams, then the TTFT, the transfer figures and a one-line summary, and shuts the
three daemons down. The decode node runs with `--local-prefill-below 0`, so the prompt is prefilled on the
prefill node and its KV pages travel through the Mooncake transfer engine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from urllib.parse import urlsplit

from pdpair.router.local_cluster import LocalCluster

SYSTEM = (
    "You are a concise assistant for a team that runs large language models in production. The team splits "
    "every request in two: a prefill node reads the whole prompt at once and writes its attention keys and "
    "values into pages of memory, and a decode node receives those pages and then produces the answer one "
    "token at a time. Answer plainly, in two or three sentences, without lists."
)
QUESTION = "Why would someone run the prompt-reading step and the answer-writing step on different machines?"


def _stream_chat(router_url: str, body: dict):
    """POST a streaming chat request; yield each SSE payload as a dict."""
    url = urlsplit(router_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"router answered {resp.status}: {resp.read().decode(errors='replace')}")
    try:
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            yield json.loads(data)
    finally:
        conn.close()


def run(max_tokens: int, chunk_size: int) -> int:
    node_args = ["--max-pages", "256", "--log-level", "WARNING"]
    with LocalCluster(prefill=1, decode=1, node_args=node_args, prefill_args=["--chunk-size", str(chunk_size)],
                      decode_args=["--local-prefill-below", "0"], router_args=["--log-level", "WARNING"]) as c:
        print(f"prefill-node {c.prefill_addrs[0]}  decode-node {c.decode_addrs[0]}  router {c.router_url}")
        print(f"logs in {c.log_dir}\n")
        print(f"user: {QUESTION}\nassistant: ", end="", flush=True)
        body = {
            "model": "smollm2-135m",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        first_at = None
        ext, usage, finish = None, None, None
        for event in _stream_chat(c.router_url, body):
            if "error" in event:
                raise RuntimeError(f"stream failed: {event['error']['message']}")
            for choice in event.get("choices", []):
                text = choice["delta"].get("content")
                if text:
                    first_at = first_at or time.perf_counter()
                    print(text, end="", flush=True)
                finish = choice.get("finish_reason") or finish
            ext = event.get("pdpair") or ext
            usage = event.get("usage") or usage
        total = time.perf_counter() - start
        print("\n")
    if ext is None or usage is None:
        print("error: the stream carried no pdpair figures or usage", file=sys.stderr)
        return 1
    client_ttft = (first_at or time.perf_counter()) - start
    print(f"TTFT: {client_ttft * 1e3:.1f} ms at the client, {ext['ttft_s'] * 1e3:.1f} ms on the decode node")
    t = ext.get("transfer")
    if ext["prefilled_remotely"] and t:
        print(f"transfer: {t['items']} pages, {t['bytes'] / 1e6:.2f} MB in {t['batches']} batches "
              f"({t['entries']} contiguous runs), {t['seconds'] * 1e3:.2f} ms in the transfer engine, "
              f"{t['gbps']:.2f} GB/s")
    decode_s = max(total - client_ttft, 1e-9)
    print(f"summary: {usage['prompt_tokens']} prompt tokens prefilled on {ext.get('prefill_node') or 'the decode node'}, "
          f"{usage['completion_tokens']} tokens decoded on {ext['decode_node']} "
          f"({usage['completion_tokens'] / decode_s:.1f} tok/s, finish={finish}), {total:.2f} s end to end; "
          f"daemons exit codes {c.exit_codes}")
    if not ext["prefilled_remotely"]:
        print("error: the prompt was not prefilled on the prefill node", file=sys.stderr)
        return 1
    return 0 if all(code == 0 for code in c.exit_codes.values()) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pdpair.router.demo", description=__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=64, help="answer length cap (default: 64)")
    p.add_argument("--chunk-size", type=int, default=64,
                   help="prefill chunk size in tokens: a prompt over several chunks streams pages while it "
                        "is prefilled (default: 64)")
    args = p.parse_args(argv)
    return run(args.max_tokens, args.chunk_size)


if __name__ == "__main__":
    sys.exit(main())
