"""The prefill daemon: gRPC service, chunked-prefill loop, page sender."""

__all__: list[str] = []
