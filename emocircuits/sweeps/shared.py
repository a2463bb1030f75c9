"""Work shared by every cell of a worker: one model load per process."""

from __future__ import annotations

from typing import Any

from emocircuits.core.models import load_model

_MODELS: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}


def cached_model(model_cfg: Any, *, progress: bool = False) -> tuple[Any, Any]:
    """``(bridge, ModelSpec)`` for a ``[model]`` config, loaded once per process (one model kept)."""

    key = (model_cfg.spec, model_cfg.dtype, model_cfg.device, model_cfg.device_map)
    if key not in _MODELS:
        _MODELS.clear()
        if not progress:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        _MODELS[key] = load_model(model_cfg.spec, dtype=model_cfg.dtype, device=model_cfg.device,
                                  progress=progress, device_map=model_cfg.device_map or None)
    return _MODELS[key]
