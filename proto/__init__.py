"""Wire protocol: generated protobuf messages and gRPC stubs (see pdpair.proto)."""

from pdpair.proto import pdpair_pb2, pdpair_pb2_grpc

# Trailing-metadata key of a failed DecodeNode.Generate: the pdpair_pb2.FailureSide name it blames.
FAILURE_METADATA_KEY = "pdpair-failure"

__all__ = ["FAILURE_METADATA_KEY", "pdpair_pb2", "pdpair_pb2_grpc"]
