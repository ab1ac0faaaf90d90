"""Module 4, HNLMRec: an LLM fine-tuned (LoRA) with collaborative supervision emits hard-negative embeddings.

Public API:
  QueryEncoder, EncoderConfig, contrastive_loss      (model.py)
  Teacher, MiningConfig, QueryBuilder, build_examples (queries.py: training split only)
  FinetuneConfig, make_trainer, load_base             (finetune.py: Hugging Face Trainer)
  emit                                               (infer.py: batched, resumable embedding pass)
  RunConfig, run_finetune, load_bank                  (pipeline.py: `hnlm finetune`)
  transfer_bank                                      (transfer.py: a fine-tuned encoder applied to another dataset)
"""
