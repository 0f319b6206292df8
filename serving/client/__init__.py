"""The Python client of the server's own API (imageclassifier.v1 over gRPC) and the client-side image preparation,
and repository control (``ModelControl``: Triton's repository extension).

Beside the server's front ends, not inside them: the classify, models and ``batch --server`` commands use it, and it
needs neither onnxruntime nor the server's runtime.
"""

from serving.client.classifier import Client, read_token
from serving.client.models import ModelControl

__all__ = ["Client", "ModelControl", "read_token"]
