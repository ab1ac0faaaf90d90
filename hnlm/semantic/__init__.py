"""The paper's modules: profiles (1), semantic negatives (2), alignment (3), HNLMRec fine-tuning (4)."""
