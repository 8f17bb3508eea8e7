"""Which torch device a job runs on, checked before anything loads (extract, training, predict, serve, the
Recognizer): a device this machine lacks is one clear error, not a CUDA traceback minutes later."""
from __future__ import annotations

from .errors import EmoadaptError


def check_device(device: str, setting: str = "--device") -> str:
    """``device`` if torch has it here (cpu, cuda, cuda:N, mps); ``setting`` names it in the error."""
    import torch
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise EmoadaptError(None, f"{setting} {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise EmoadaptError(None, f"{setting} {device}: this torch build has no CUDA or no GPU is visible; use "
                                      f"cpu, or install the torch build for your CUDA")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise EmoadaptError(None, f"{setting} {device}: only {torch.cuda.device_count()} GPUs are visible")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise EmoadaptError(None, f"{setting} {device}: MPS is not available here; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise EmoadaptError(None, f"{setting} {device}: emoadapt runs on cpu, cuda or mps")
    return str(device)
