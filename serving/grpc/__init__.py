"""The gRPC front end: servicers, protobuf ↔ neutral converters, error kind → gRPC code, token check, health."""
