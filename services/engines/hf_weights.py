"""Full weights for the in-process engine (``POST /v1/weights``): a full fine-tuning version
is copied into the served model in place, so loaded LoRA adapters stay and now adapt the new
weights (peft wraps a layer's weight as ``<layer>.base_layer.weight``).

The copy checks first that every tensor of the folder has a place of the same shape in the
served model, and that every served weight is covered, so a foreign folder is refused
before anything changes. It runs on the model thread, between two generate calls.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from magsrl.common.errors import InvalidInput

log = logging.getLogger("magsrl.policy.hf")


def copy_weights(
    model: Any, folder: Path, *, device: torch.device, dtype: torch.dtype, base_name: str
) -> None:
    from peft import PeftModel

    from magsrl.models.loading import load_model

    started = time.perf_counter()
    try:  # from_pretrained maps the checkpoint's names onto this transformers version's
        loaded = load_model(folder, device=str(device), dtype=dtype).state_dict()
    except Exception as exc:  # a foreign or corrupt folder is the caller's fault
        log.warning("could not load a model from %s: %s", folder, exc)
        raise InvalidInput(
            f"could not load a model from '{folder}' (a model folder with config.json and "
            "safetensors weights)",
            param="path",
        ) from exc
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    served = base.state_dict(keep_vars=True)
    pairs = []
    for name, tensor in loaded.items():
        layer, _, kind = name.rpartition(".")
        target = served.get(name, served.get(f"{layer}.base_layer.{kind}"))
        if target is None or target.shape != tensor.shape:
            raise InvalidInput(
                f"'{folder}' holds another architecture than the served model ({name} "
                f"{tuple(tensor.shape)} has no match); it must be a version of {base_name}",
                param="path",
            )
        pairs.append((target, tensor))
    covered = {id(target) for target, _ in pairs}
    left = [n for n, t in served.items() if id(t) not in covered and "lora_" not in n]
    if left:
        raise InvalidInput(
            f"'{folder}' has no {left[0]} (and {len(left) - 1} more weights of the served "
            f"model); it must be a whole version of {base_name}",
            param="path",
        )
    with torch.no_grad():
        for target, tensor in pairs:
            target.copy_(tensor)
    log.info("loaded the weights of %s in %.2fs", folder, time.perf_counter() - started)
