"""Serving: ``contract`` (the model repository), ``runtime`` (data plane), ``grpc`` (front end), ``batch`` (CLI).

Imports neither torch nor fastai: the serve image installs only onnxruntime, gRPC, NumPy and Pillow.
"""
