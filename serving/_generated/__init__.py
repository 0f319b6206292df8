"""Generated protobuf/gRPC stubs; regenerate with ``python -m serving.gen_protos``. DO NOT EDIT."""
