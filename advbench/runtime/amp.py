"""Mixed precision: the autocast context for the run's ``amp`` setting."""
from contextlib import nullcontext

import torch

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str):
    """Autocast context for ``amp`` (off | bf16 | fp16) on ``device``."""
    dtype = AMP_DTYPES[amp]
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)
