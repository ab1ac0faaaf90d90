"""HNLMRec study: LLM-generated hard negatives for collaborative filtering."""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported through peft) warns on CPUs with bf16 instructions that an optional CPU 4-bit kernel
# package is missing; 4-bit loading is CUDA-only here, so the hint only confuses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
