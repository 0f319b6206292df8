"""Container deployment files and their offline checks (``python -m deploy.check``)."""
