"""``python -m serving batch``: inputs → decoding workers → local or remote runner → CSV/JSONL rows, with progress."""
