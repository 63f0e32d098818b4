"""The decode daemon: gRPC service, decode loop, page receiver, local-prefill policy."""

__all__: list[str] = []
