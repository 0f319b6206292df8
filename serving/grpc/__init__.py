"""The gRPC front end: servicers, protobuf converters, the one error → status mapping, server and client."""
