"""The Python client of the server's own API (imageclassifier.v1 over gRPC) and the client-side image preparation.

Beside the server's front ends, not inside them: the classify CLI and ``batch --server`` use it, and it needs
neither onnxruntime nor the server's runtime.
"""

from serving.client.classifier import Client, read_token

__all__ = ["Client", "read_token"]
