"""Training checkpoints: the only home of torch.save / torch.load in maskgan.

A checkpoint is a directory (Ray Train persists directories to its storage, local or S3):

    <dir>/state.pt              full training state (networks, optimisers, schedulers, EMA, step, RNG
                                states); pickled, so loaded with weights_only=False -- only our own runs
    <dir>/weights/<network>.pt  a plain state_dict per network; loads with torch.load(weights_only=True)
    <dir>/meta.json             stage, step, epoch, resolved config, manifest checksum, networks,
                                created_at, format_version

meta.json is written last and marks a complete checkpoint: a directory without it is refused.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from maskgan import storage
from maskgan.storage import StorageConfig

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
META_FILE = "meta.json"
WEIGHTS_DIR = "weights"
# Keys the caller supplies in `meta`; networks, created_at and format_version are filled in here.
REQUIRED_META = ("stage", "step", "epoch", "config", "manifest_sha256")
FILES_KEY = "files"  # meta.json: {relative path: bytes} of every other file (absent in older checkpoints)
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------------------------- files


def torch_bytes(obj: Any) -> bytes:
    """torch.save(obj) into memory."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_torch_file(
    obj: Any, path_or_uri: str | os.PathLike[str], storage_config: StorageConfig | None = None
) -> None:
    """torch.save(obj) to a local path or s3:// URI (local writes go through a temporary name)."""
    storage.write_bytes(storage.resolve(os.fspath(path_or_uri), storage_config), torch_bytes(obj))


def load_torch_file(
    path_or_bytes: str | os.PathLike[str] | bytes | io.IOBase,
    *,
    weights_only: bool = True,
    map_location: Any = "cpu",
    storage_config: StorageConfig | None = None,
) -> Any:
    """torch.load of a local path, an s3:// URI, bytes or a binary file object.

    weights_only=True (the default) refuses pickled code: use it for any file not written by our own
    training runs (released weights, downloads).
    """
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        source: Any = io.BytesIO(bytes(path_or_bytes))
        name = "<bytes>"
    elif isinstance(path_or_bytes, io.IOBase):
        source, name = path_or_bytes, "<file object>"
    else:
        name = os.fspath(path_or_bytes)
        location = storage.resolve(name, storage_config)
        if not storage.exists(location):
            raise FileNotFoundError(f"no file at {location.uri}")
        source = location.path if not location.is_s3 else io.BytesIO(storage.read_bytes(location))
    try:
        return torch.load(source, map_location=map_location, weights_only=weights_only)
    except Exception as error:  # torch raises pickle/zip/runtime errors of many types
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"could not torch.load {name} (weights_only={weights_only}): {first_line}"
        ) from error


# ------------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict[str, Any]:
    """The global RNG states of python, numpy and torch (and every CUDA device when there is one)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what rng_state() returned; the CUDA states only where CUDA is present."""
    missing = [key for key in ("python", "numpy", "torch") if key not in state]
    if missing:
        raise ValueError(f"RNG state lacks {', '.join(missing)}; expected the dict rng_state() returns")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]]
        # A checkpoint from more GPUs than this process sees restores the ones that exist.
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])


# ------------------------------------------------------------------------------------------- writing


def _validated_weights(weights: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, dict]:
    if not weights:
        raise ValueError("write_checkpoint needs at least one network in weights")
    out = {}
    for network, state_dict in weights.items():
        if not isinstance(network, str) or not _NETWORK_NAME.match(network):
            raise ValueError(f"network name {network!r} must be a plain file name ([A-Za-z0-9_.-])")
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"weights[{network!r}] is a {type(state_dict).__name__}, expected a state dict")
        bad = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
        if bad:
            raise ValueError(f"weights[{network!r}] holds non-tensors {bad[:5]}; expected a state dict")
        if state_dict and all(key.startswith("module.") for key in state_dict):
            raise ValueError(f"weights[{network!r}] keys start with 'module.': unwrap DDP before saving")
        out[network] = {key: value.detach().cpu() for key, value in state_dict.items()}
    return out


def _complete_meta(meta: Mapping[str, Any], networks: list[str]) -> dict[str, Any]:
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(
            f"checkpoint meta lacks {', '.join(missing)}; expected keys {', '.join(REQUIRED_META)} "
            "(manifest_sha256 may be None)"
        )
    if not isinstance(meta["step"], int) or meta["step"] < 0:
        raise ValueError(f"checkpoint meta.step must be an int >= 0, got {meta['step']!r}")
    out = dict(meta)
    out["networks"] = networks
    out.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds"))
    out["format_version"] = FORMAT_VERSION
    return out


def write_checkpoint(
    directory: str,
    state: Mapping[str, Any],
    *,
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    meta: Mapping[str, Any],
    storage_config: StorageConfig | None = None,
    overwrite: bool = False,
) -> None:
    """Write a checkpoint directory (local path or s3:// URI) so that a reader sees all of it or none.

    Local: everything goes into a hidden sibling folder renamed into place at the end. S3: the files
    are written first and meta.json last (each PUT is atomic), so a partial upload has no meta.json.
    An existing complete checkpoint there is refused unless overwrite=True.
    """
    weights = _validated_weights(weights)
    meta = _complete_meta(meta, sorted(weights))
    files = {STATE_FILE: torch_bytes(dict(state))}
    files |= {f"{WEIGHTS_DIR}/{name}.pt": torch_bytes(sd) for name, sd in weights.items()}
    # Sizes of the other files: a copy of the folder made by someone else (Ray Train persisting a
    # reported checkpoint copies files in any order) that was cut short reads as incomplete.
    meta[FILES_KEY] = {name: len(data) for name, data in sorted(files.items())}
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True)
    except TypeError as error:
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {error}") from None
    location = storage.resolve(directory, storage_config)
    if location.is_s3:
        _write_s3(location, files, meta_text, overwrite)
    else:
        _write_local(location.path, files, meta_text, overwrite)


def export_inference(
    uri: str, directory: str, networks: set[str] | frozenset[str], storage_config: StorageConfig | None = None
) -> list[str]:
    """Copy the inference part of a checkpoint to a local folder: the weights of those of `networks`
    it holds and a meta.json naming only them (no state.pt, optimisers, discriminator, ...).

    meta.json is written last and lists the copied files' sizes, so the copy reads as complete and a
    copy cut short does not. Returns the networks copied; ValueError when the checkpoint holds none.
    """
    meta = read_meta(uri, storage_config)
    kept = [name for name in meta.get("networks", []) if name in networks]
    if not kept:
        raise ValueError(
            f"checkpoint {uri} holds none of {sorted(networks)} (networks: {meta.get('networks')})"
        )
    source = storage.resolve(uri, storage_config)
    os.makedirs(os.path.join(directory, WEIGHTS_DIR), exist_ok=True)
    files = {}
    for name in kept:
        relative = f"{WEIGHTS_DIR}/{name}.pt"
        data = storage.read_bytes(source.join(WEIGHTS_DIR, f"{name}.pt"))
        with open(os.path.join(directory, relative), "wb") as handle:
            handle.write(data)
        files[relative] = len(data)
    exported = {**meta, "networks": kept, "exported_from": uri, FILES_KEY: files}
    with open(os.path.join(directory, META_FILE), "w") as handle:
        json.dump(exported, handle, indent=2, sort_keys=True)
    return kept


def _write_s3(location: storage.Location, files: dict[str, bytes], meta_text: str, overwrite: bool) -> None:
    meta_location = location.join(META_FILE)
    if storage.exists(meta_location):
        if not overwrite:
            raise FileExistsError(f"a checkpoint already exists at {location.uri}; pass overwrite=True")
        # Drop the marker first: while the new files go up, the old checkpoint reads as incomplete.
        location.fs.delete_file(meta_location.path)
        # No stale weights of networks the new checkpoint lacks. File by file: pyarrow's delete_dir
        # would leave a marker object for the parent prefix behind.
        for info in storage.list_files(location):
            location.fs.delete_file(info.path)
    for name, data in files.items():
        storage.write_bytes(location.join(name), data)
    storage.write_bytes(meta_location, meta_text.encode())


def _write_local(path: str, files: dict[str, bytes], meta_text: str, overwrite: bool) -> None:
    parent, name = os.path.split(path.rstrip("/"))
    os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, f".tmp-{name}-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(os.path.join(temporary, WEIGHTS_DIR))
        for relative, data in {**files, META_FILE: meta_text.encode()}.items():
            with open(os.path.join(temporary, relative), "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        if os.path.isdir(path) and os.listdir(path):
            if not overwrite:
                raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
            old = os.path.join(parent, f".old-{name}-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            os.rename(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)  # replaces an empty directory (e.g. a fresh tempfile.mkdtemp)
    finally:
        if os.path.exists(temporary):
            shutil.rmtree(temporary, ignore_errors=True)


# ------------------------------------------------------------------------------------------- reading


def _relative(path: str, location: storage.Location) -> str:
    """A listed file's path below location, "/"-separated.

    Text, not os.path.relpath: an S3 path ("bucket/key") is not a local one, and relpath resolves it
    against the working directory, which a Ray job's driver may no longer have (FileNotFoundError).
    """
    return path.removeprefix(location.path.rstrip("/") + "/")


def read_meta(uri: str, storage_config: StorageConfig | None = None) -> dict[str, Any]:
    """meta.json of a complete checkpoint; FileNotFoundError / ValueError say what is wrong and where."""
    location = storage.resolve(uri, storage_config)
    text = storage.read_text_if_exists(location.join(META_FILE))
    if text is None:
        if not storage.exists(location) and not storage.list_files(location):
            raise FileNotFoundError(f"no checkpoint at {location.uri}")
        raise FileNotFoundError(
            f"{location.uri} has no {META_FILE}: the checkpoint is incomplete (a write was interrupted) "
            f"or the folder is not a checkpoint; expected {META_FILE}, {STATE_FILE} and {WEIGHTS_DIR}/"
        )
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{location.uri}/{META_FILE} is not valid JSON: {error}") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {location.uri} has format_version {version!r}; this code reads {FORMAT_VERSION}"
        )
    expected = meta.get(FILES_KEY)
    if expected:
        sizes = {_relative(info.path, location): info.size for info in storage.list_files(location)}
        short = [f"{name} ({sizes.get(name, 0)} of {size} bytes)" for name, size in expected.items()
                 if sizes.get(name) != size]  # fmt: skip
        if short:
            raise FileNotFoundError(
                f"{location.uri} is incomplete (a copy or write was cut short): {', '.join(short)}"
            )
    return meta


def load_checkpoint_uri(
    uri: str, storage_config: StorageConfig | None = None, *, map_location: Any = "cpu"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of the checkpoint at a local directory or s3:// URI."""
    meta = read_meta(uri, storage_config)
    location = storage.resolve(uri, storage_config)
    present = {_relative(info.path, location) for info in storage.list_files(location)}
    expected = [STATE_FILE] + [f"{WEIGHTS_DIR}/{network}.pt" for network in meta.get("networks", [])]
    absent = [name for name in expected if name not in present]
    if absent:
        raise ValueError(f"checkpoint {location.uri} lacks {', '.join(absent)} although meta.json lists them")
    # Our own runs wrote state.pt (optimisers, RNG tuples): full unpickling is needed and trusted here.
    state = load_torch_file(location.join(STATE_FILE).uri, weights_only=False, map_location=map_location,
                            storage_config=storage_config)  # fmt: skip
    if not isinstance(state, dict):
        raise ValueError(f"{location.uri}/{STATE_FILE} holds a {type(state).__name__}, expected a dict")
    return state, meta


def read_checkpoint(directory: str, *, map_location: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of a local checkpoint directory."""
    return load_checkpoint_uri(directory, map_location=map_location)


def load_weights(
    uri: str, network: str, storage_config: StorageConfig | None = None, *, map_location: Any = "cpu"
) -> dict[str, torch.Tensor]:
    """One network's plain state dict, loaded with weights_only=True (safe for checkpoints from anyone)."""
    meta = read_meta(uri, storage_config)
    networks = meta.get("networks", [])
    if network not in networks:
        raise ValueError(
            f"checkpoint {uri} (stage {meta.get('stage')!r}) has no network {network!r}; "
            f"it holds {', '.join(networks) or 'none'}"
        )
    location = storage.resolve(uri, storage_config).join(WEIGHTS_DIR, f"{network}.pt")
    state_dict = load_torch_file(location.uri, map_location=map_location, storage_config=storage_config)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{location.uri} holds a {type(state_dict).__name__}, expected a state dict")
    return state_dict


def latest_checkpoint(
    uri: str, storage_config: StorageConfig | None = None, *, stage: str | None = None, max_depth: int = 2
) -> str | None:
    """URI of the complete checkpoint with the highest step at uri or in folders below it, or None.

    uri may be a checkpoint, a Ray Train run folder (checkpoint_* inside) or the storage root of runs
    (max_depth levels down); stage keeps only that stage's checkpoints. Hidden folders (our temporary
    ones, Ray's) are skipped.
    """
    location = storage.resolve(uri, storage_config)
    if storage.exists(location.join(META_FILE)):
        meta = read_meta(location.uri, storage_config)
        return location.uri if stage is None or meta.get("stage") == stage else None
    best: tuple[int, str] | None = None
    for info in storage.list_files(location):
        parts = _relative(info.path, location).split("/")
        if parts[-1] != META_FILE or len(parts) - 1 > max_depth or any(p.startswith(".") for p in parts):
            continue
        candidate = location.join(*parts[:-1]).uri
        try:
            meta = read_meta(candidate, storage_config)
        except FileNotFoundError:  # meta.json there, but its files are not all there yet
            continue
        if stage is not None and meta.get("stage") != stage:
            continue
        if best is None or (meta["step"], candidate) > best:
            best = (meta["step"], candidate)
    return None if best is None else best[1]


def resolve_checkpoint(
    uri: str, storage_config: StorageConfig | None = None, *, stage: str | None = None
) -> str:
    """latest_checkpoint, or FileNotFoundError naming the URI (and stage) when there is none."""
    found = latest_checkpoint(uri, storage_config, stage=stage)
    if found is None:
        of_stage = f" of stage {stage!r}" if stage else ""
        raise FileNotFoundError(
            f"no complete checkpoint{of_stage} at or under {uri} (looked for {META_FILE} 2 levels down)"
        )
    return found
