"""The only weights loader: safetensors, .pt (weights_only), or a Hugging Face repo id; always strict.

A mismatch raises CheckpointError naming the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from spark3r_stream.errors import CheckpointError

log = logging.getLogger(__name__)

# Prefixes that wrappers add around an unchanged state dict (DDP `module.`, HF-style `model.`); stripped whole-file.
KNOWN_PREFIXES = ("module.", "model.")
HUB_FILENAMES = ("model.safetensors", "model.pt")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pt/.pth/.bin file (a flat dict, or a training checkpoint's {"model": ...})."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.is_dir():
        for name in HUB_FILENAMES:
            if (path / name).exists():
                return read_state_dict(path / name)
        raise CheckpointError(f"checkpoint {path}: a directory without {' or '.join(HUB_FILENAMES)}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({exc})") from exc
    try:
        with warnings.catch_warnings():  # its note on pickle protocols is noise next to the one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, Exception) as exc:  # noqa: BLE001
        # torch.load raises many unrelated types for truncated / foreign files; all mean "not a checkpoint"
        raise CheckpointError(
            f"checkpoint {path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {_torch_load_reason(exc)})"
        ) from exc
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # training-code checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def _torch_load_reason(exc: BaseException) -> str:
    """torch.load's error as one line, without its advice to retry with weights_only=False (never do that for a
    file that needs it: it can run code) and its pointer to the docs."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [
        line
        for line in lines
        if line and "weights_only" not in line and "Check the documentation" not in line and "Re-running" not in line
    ]
    reason = " ".join(kept) or "it holds objects other than tensors"
    if isinstance(exc, pickle.UnpicklingError):
        reason += "; refused without running anything in it (only tensors are loaded)"
    return reason[:400]


def strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix when every key carries it and the model's own keys do not."""
    for prefix in KNOWN_PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in expected):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def fill_shared_aliases(
    state: dict[str, torch.Tensor], aliases: dict[str, str], source: str
) -> dict[str, torch.Tensor]:
    """Add the names a file omits for tensors that modules share, from the model's explicit alias table.

    safetensors stores a shared tensor once (DA3's aux LayerNorm: `models.da3.SHARED_TENSOR_ALIASES`); `aliases`
    maps each omitted name to the stored one. A file that does store both must store the same values.
    """
    if not aliases:
        return state
    state = dict(state)
    for alias, stored in aliases.items():
        if alias in state:
            if stored in state and not torch.equal(state[alias], state[stored]):
                raise CheckpointError(f"checkpoint {source}: {alias} and {stored} are one shared tensor but differ")
        elif stored in state:
            state[alias] = state[stored]
    return state


def _describe(keys: list[str], shapes: dict[str, tuple], limit: int = 5) -> str:
    shown = ", ".join(f"{k} {list(shapes[k])}" if k in shapes else k for k in keys[:limit])
    return shown + (", …" if len(keys) > limit else "")


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model`; every key must match in name and shape, or one CheckpointError lists the diff."""
    own = model.state_dict()
    state = strip_prefix(state, set(own))
    state = fill_shared_aliases(state, getattr(model, "shared_tensor_aliases", {}), source)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mis_shaped:
        own_shapes = {k: tuple(v.shape) for k, v in own.items()}
        their_shapes = {k: tuple(v.shape) for k, v in state.items()}
        parts = [
            f"{len(missing)} missing keys ({_describe(missing, own_shapes)})" if missing else "0 missing",
            f"{len(unexpected)} unexpected ({_describe(unexpected, their_shapes)})" if unexpected else "0 unexpected",
        ]
        if mis_shaped:
            shown = ", ".join(
                f"{k}: model {list(own_shapes[k])} vs file {list(their_shapes[k])}" for k in mis_shaped[:5]
            )
            parts.append(f"{len(mis_shaped)} wrong shapes ({shown}{', …' if len(mis_shaped) > 5 else ''})")
        hint = ""
        if missing and all(k.startswith("track_head.") for k in missing):
            hint = "; a file without a track head needs enable_track=False"
        raise CheckpointError(f"checkpoint {source} does not fit the model: {', '.join(parts)}{hint}")
    model.load_state_dict(state, strict=True, assign=any(p.is_meta for p in model.parameters()))


def resolve_hub(repo_id: str) -> Path:
    """Download (or find in the local cache) the weights of a Hugging Face repo id."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as exc:
        raise CheckpointError(
            f"weights {repo_id!r}: not a local file, and huggingface_hub is not installed to fetch it "
            "(pip install 'spark3r-stream[hub]')"
        ) from exc
    last_error: Exception | None = None
    for filename in HUB_FILENAMES:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except EntryNotFoundError as exc:
            last_error = exc
        except Exception as exc:  # noqa: BLE001 - network/auth errors come in many types; report them as one
            raise CheckpointError(f"weights {repo_id!r}: could not fetch from the Hugging Face hub ({exc})") from exc
    raise CheckpointError(f"weights {repo_id!r}: the repo has none of {HUB_FILENAMES} ({last_error})")


def load_weights(model: nn.Module, path_or_repo_id: str | Path) -> nn.Module:
    """Load a checkpoint into `model` strictly: a local .safetensors/.pt file or folder, else a hub repo id."""
    source = str(path_or_repo_id)
    path = Path(source).expanduser()
    looks_like_repo = not path.exists() and source.count("/") == 1 and not source.startswith((".", "/", "~"))
    if looks_like_repo:
        path = resolve_hub(source)
    state = read_state_dict(path)
    load_state_dict_strict(model, state, source)
    log.info("loaded %d tensors from %s", len(state), source)
    return model
