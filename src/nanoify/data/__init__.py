"""Data loading: text classification sets (TSV/CSV/JSONL/Hugging Face), label maps, batching."""
