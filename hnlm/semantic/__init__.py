"""The paper's modules: profiles (1), semantic negatives (2), alignment (3), HNLMRec fine-tuning (4).

  profiles.py   module 1: LLM item and user profiles (`hnlm profiles`)
  sns.py        module 2: prompts -> LLM JSON hard negatives -> MiniLM embeddings -> bank / grounded pools / quality
                (`hnlm sns --dataset ml-100k --llm qwen2.5-0.5b --budget per-user:1 --context history`)
  judge.py      the LLM as a judge: yes/no scores of a teacher's top unseen items per user (`hnlm judge`)
  bank.py       NegativeBank (any embedding table keyed by (user, positive item)), lookup, ablations
  alignment.py  module 3: AlignmentExtension, trainable adapter, e_neg' = a*adapter(h) + (1-a)*e_neg, contrastive term
  hnlmrec/      module 4: LoRA fine-tuning of the LLM with CF supervision, its embedding pass and transfer
                (`hnlm finetune`)
  rlmrec.py     RLMRecExtension (RLMRec-Con: projected profile embeddings aligned by InfoNCE)
  resources.py  what the LLM-based methods train with, by name, with content digests
  outputs.py    the shipped LLM outputs (outputs/): format, manifest, integrity, lookup
  common.py     helpers of modules 1, 2 and 4 (which pairs, prompt texts, split identity)
  commands.py   the CLI of modules 1-2 and of the judge
  prompts/      the prompt templates (a domain's file, else the generic `_item` one)
The methods that train with these outputs are declared in hnlm.methods.
"""
