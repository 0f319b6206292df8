"""What training writes and serving reads: repository folders, model.json, preprocessing, Triton's config."""
