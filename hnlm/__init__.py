"""HNLMRec study: LLM-generated hard negatives for collaborative filtering."""

import logging
import os

__version__ = "0.1.0"

# bitsandbytes (imported through peft) warns on CPUs with bf16 instructions that an optional CPU 4-bit kernel
# package is missing; 4-bit loading is CUDA-only here, so the hint only confuses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# Offline by default: the Hugging Face libraries read these switches when first imported, so no command, notebook
# or test reaches for the model hub (an unavailable model fails at once with the fix, instead of retrying the
# network for half a minute). HNLM_ONLINE=1 lets them fetch what the local cache lacks.
ONLINE_VAR = "HNLM_ONLINE"
if os.environ.get(ONLINE_VAR) != "1":
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
