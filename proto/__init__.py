"""Wire protocol: generated protobuf messages and gRPC stubs (see pdpair.proto)."""

from pdpair.proto import pdpair_pb2, pdpair_pb2_grpc

__all__ = ["pdpair_pb2", "pdpair_pb2_grpc"]
