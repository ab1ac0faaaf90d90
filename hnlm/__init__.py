"""HNLMRec study: LLM-generated hard negatives for collaborative filtering."""

__version__ = "0.1.0"
