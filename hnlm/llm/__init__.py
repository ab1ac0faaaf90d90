"""LLM layer: packaged models, generation backends (local transformers, OpenAI-compatible HTTP), structured
JSON output, the resumable call cache, text encoders and the one hidden-state pooling rule."""
