"""What training writes and serving reads (repository folders, model.json, preprocessing, Triton's config), the
input-tensor rules, and the neutral request/answer types every front end hands the data plane."""
