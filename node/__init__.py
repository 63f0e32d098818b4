"""Plumbing both node daemons share: config, engine thread, layouts, metrics, gRPC server, drain."""

__all__: list[str] = []
