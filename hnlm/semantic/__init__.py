"""The paper's modules: profiles (1), semantic negatives (2), alignment (3), HNLMRec fine-tuning (4).

Modules 2-3 and the LLM-enhanced baseline:
  sns.py        prompts -> LLM JSON hard negatives -> MiniLM embeddings -> bank / grounded pools / quality
                (`hnlm sns --dataset ml-100k --llm qwen2.5-0.5b --budget per-user:1 --context history`)
  bank.py       NegativeBank (any embedding table keyed by (user, positive item)), lookup, ablations
  alignment.py  AlignmentExtension: trainable MLP adapter, e_neg' = a*adapter(h) + (1-a)*e_neg, contrastive term
  rlmrec.py     RLMRecExtension (RLMRec-Con: projected profile embeddings aligned by InfoNCE)
  methods.py    `hnlm train --sampler sns|sns-grounded|sns-random|sns-shuffled|rlmrec-con` builders/options
  grid.py       the issue-5 comparison (methods x seeds) and its summary table
"""
