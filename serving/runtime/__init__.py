"""The runtime every transport shares: predictor, loader, dynamic batcher, model registry and data plane."""
