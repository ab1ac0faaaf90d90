"""Module 4, HNLMRec: an LLM fine-tuned (LoRA) with collaborative supervision emits hard-negative embeddings.

Public API:
  QueryEncoder, EncoderConfig, contrastive_loss      (model.py)
  Teacher, MiningConfig, QueryBuilder, build_examples (queries.py: training split only)
  FinetuneConfig, make_trainer, load_base             (finetune.py: Hugging Face Trainer)
  emit                                               (infer.py: batched, resumable embedding pass)
  RunConfig, run_finetune, load_bank                  (run.py: `hnlm finetune`, one fine-tuning run end to end)
  obtain_bank, run_settings                          (banks.py: a run's bank, shipped in outputs/ else made here)
  transfer_bank, obtain_transfer                     (transfer.py: a fine-tuned encoder applied to another dataset)
"""
