"""Hugging Face checkpoints: import (`load_hf`) and export (`save_hf`) of safetensors directories.

Supported architectures: `DeepseekV3ForCausalLM` (MLA + DeepSeekMoE, optional MTP layers),
`Qwen2ForCausalLM` and `LlamaForCausalLM` (GQA). A directory holds `config.json` and either
`model.safetensors` or `model.safetensors.index.json` with its shards.

Mapping. Our parameter paths (`r1jax.models.transformer`, scan_layers=False) map one to one onto
HF tensor names: `layers_{i}/...` -> `model.layers.{i}....`, `.../kernel` [in, out] ->
`....weight` [out, in] (transposed), norm `weight` and `bias` as they are; routed experts
`experts/{gate,up,down}_proj` [E, ...] are stacked from `experts.{e}.{...}.weight`; MTP depth k
(`mtp_{k}`) is the checkpoint's extra layer `model.layers.{num_hidden_layers + k}` with
`enorm`, `hnorm`, `eh_proj` and `shared_head.norm` (its copies of the embedding and output head,
`embed_tokens` and `shared_head.head`, are ignored on load and written on save).

Files are untrusted: config.json fields are checked as `r1jax.models.hf_config` maps them
(each error names the file and field); the layer count
and embedding shape are checked against the tensor headers before the parameter tree is
described; every expected tensor must be present with its expected shape and finite values; unexpected tensors are an error except rotary `inv_freq` buffers, a
tied model's `lm_head.weight`, and the MTP copies above. MTP layers are loaded when present; a
config that announces `num_nextn_predict_layers` without shipping the layers (as transformers'
own `save_pretrained` does) gives a config with num_nextn_predict_layers = 0.

Deviations: implementation choices of `ModelConfig` that HF configs do
not hold (moe_dispatch, remat, scan_layers, aux_loss_alpha, ...) take their defaults on load;
change them with `config.replace(...)`.

Sharded, FP8 and scanned. `load_hf(..., mesh=...)` builds each parameter from the slices of the
checkpoint its devices hold (`r1jax.models.hf_shards`): no process reads or holds more than the
blocks of one tensor its devices need; FP8 block-quantised weights (DeepSeek-V3's official
release) are dequantised as they are read; `scan_layers=True` stacks the layers into the scanned
tree directly. `save_hf` takes either tree, sharded across processes, gathering one tensor at a
time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from r1jax import ownership
from r1jax.models import config as config_lib
from r1jax.models import hf_config, hf_shards, moe, scan_layout, transformer

CONFIG_FILE = hf_config.CONFIG_FILE
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


# ---------------------------------------------------------------------------------------------
# Parameter paths <-> HF tensor names.


def _layer_names(rest: tuple[str, ...], prefix: str, config) -> tuple[list[str], bool]:
    """HF names for one decoder layer's param path `rest`, and whether kernels transpose."""
    if rest[-2:-1] == ("experts",):  # Stacked routed experts [E, in, out].
        return [f"{prefix}mlp.experts.{e}.{rest[-1]}.weight"
                for e in range(config.n_routed_experts)], True
    if rest[-1] == "kernel":
        return [prefix + ".".join(rest[:-1]) + ".weight"], True
    return [prefix + ".".join(rest)], False


def hf_names(path: tuple[str, ...], config: config_lib.ModelConfig) -> tuple[list[str], bool]:
    """The HF tensor name(s) holding our param at `path`, and whether it is transposed.

    One name per leaf, except stacked experts (one name per expert, stacked on axis 0)."""
    head, rest = path[0], path[1:]
    fixed = {("embed_tokens", "embedding"): ("model.embed_tokens.weight", False),
             ("norm", "weight"): ("model.norm.weight", False),
             ("lm_head", "kernel"): ("lm_head.weight", True)}
    if path in fixed:
        name, transpose = fixed[path]
        return [name], transpose
    if head.startswith("layers_"):
        return _layer_names(rest, f"model.layers.{int(head[7:])}.", config)
    if head.startswith("mtp_"):
        prefix = f"model.layers.{config.num_hidden_layers + int(head[4:])}."
        if rest[0] == "block":
            return _layer_names(rest[1:], prefix, config)
        if rest == ("norm", "weight"):
            return [prefix + "shared_head.norm.weight"], False
        return _layer_names(rest, prefix, config)
    raise ValueError(f"no HF name for parameter {'/'.join(path)}")


def layout(path: tuple[str, ...], shape: tuple[int, ...],
           config: config_lib.ModelConfig) -> hf_shards.Layout:
    """The HF tensors of our param at `path` (of `shape`), scanned or not: a scanned stack's
    leaf [L, ...] maps layer i to `layers_{offset + i}` (offset = the dense prefix's length for
    `moe_layers`); stacked experts add an expert axis of names."""
    if path[0] in scan_layout.STACKS:
        offset = scan_layout.stack_offset(path[0], config)
        per_layer = [layout((f"layers_{offset + i}",) + path[1:], shape[1:], config)
                     for i in range(shape[0])]
        return hf_shards.Layout(np.stack([p.names for p in per_layer]), per_layer[0].transpose)
    names, transpose = hf_names(path, config)
    grid = np.empty(len(names), object)
    grid[:] = names
    return hf_shards.Layout(grid if path[-2] == "experts" else grid[0:1].reshape(()), transpose)


def _hf_shape(shape: tuple[int, ...], lay: hf_shards.Layout) -> tuple[int, ...]:
    """The shape of each HF tensor of a param of `shape` laid out as `lay`."""
    per_tensor = shape[lay.names.ndim:]
    return tuple(reversed(per_tensor)) if lay.transpose else tuple(per_tensor)


def _ignorable(name: str, config: config_lib.ModelConfig) -> bool:
    if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight"
                                                and config.tie_word_embeddings):
        return True
    match = re.fullmatch(r"model\.layers\.(\d+)\.(embed_tokens|shared_head\.head)\.weight", name)
    return bool(match) and int(match.group(1)) >= config.num_hidden_layers


# ---------------------------------------------------------------------------------------------
# Reading safetensors.


class _Checkpoint:
    """Tensor name -> file of a (possibly sharded) safetensors directory, read lazily."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, INDEX_FILE)
        if os.path.exists(index):
            self.files = self._from_index(index)
        elif os.path.exists(os.path.join(path, WEIGHTS_FILE)):
            self.files = {name: WEIGHTS_FILE for name in self._keys(WEIGHTS_FILE)}
        else:
            raise ValueError(f"{path}: neither {WEIGHTS_FILE} nor {INDEX_FILE} found")

    def _from_index(self, index: str) -> dict[str, str]:
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: field 'weight_map' is missing or not an object")
        for shard in sorted(set(map(str, weight_map.values()))):
            if os.path.basename(shard) != shard or not os.path.isfile(
                    os.path.join(self.path, shard)):
                raise ValueError(f"{index}: shard {shard!r} is not a file in {self.path}")
            present = set(self._keys(shard))
            missing = sorted(n for n, s in weight_map.items() if s == shard and n not in present)
            if missing:
                raise ValueError(f"{index}: tensor {missing[0]!r} is mapped to {shard}, "
                                 "which does not hold it")
        return dict(weight_map)

    def _keys(self, file: str) -> list[str]:
        full = os.path.join(self.path, file)
        try:
            with safe_open(full, framework="np") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{full}: not a readable safetensors file ({e})") from None

    def shape(self, name: str) -> tuple[int, ...]:
        full = os.path.join(self.path, self.files[name])
        with safe_open(full, framework="np") as f:
            return tuple(f.get_slice(name).get_shape())


def _read_json(file: str) -> dict:
    try:
        with open(file, encoding="utf-8") as fh:
            values = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not a readable JSON file ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{file}: must hold a JSON object")
    return values


# ---------------------------------------------------------------------------------------------
# load_hf.


def _check_sizes(config: config_lib.ModelConfig, ckpt: _Checkpoint, config_file: str) -> None:
    """Checks the config's sizes against the tensors present, from the file headers only.

    Runs before the abstract parameter tree is built: a hostile `num_hidden_layers: 1000000`
    would otherwise describe (and wait on) a million layers before any tensor is looked at.
    """
    layers = {int(m.group(1)) for m in map(_LAYER.match, ckpt.files) if m}
    missing = sorted(set(range(config.num_hidden_layers)) - layers)
    if missing:
        raise ValueError(
            f"{config_file}: field 'num_hidden_layers' = {config.num_hidden_layers}, but "
            f"{ckpt.path} holds tensors for {len(layers)} layer(s) "
            f"(layer {missing[0]} is absent)")
    last = config.num_hidden_layers + config.num_nextn_predict_layers - 1  # MTP layers follow
    if layers and max(layers) > last:
        raise ValueError(
            f"{config_file}: fields 'num_hidden_layers' + 'num_nextn_predict_layers' = "
            f"{last + 1}, but {ckpt.path} holds tensors for layer {max(layers)}")
    embed = "model.embed_tokens.weight"
    if embed in ckpt.files:  # else the per-tensor check names it as missing
        want = (config.vocab_size, config.hidden_size)
        found = ckpt.shape(embed)
        if found != want:
            raise ValueError(f"{config_file}: fields 'vocab_size', 'hidden_size' = {list(want)} "
                             f"do not match tensor {embed!r} of shape {list(found)}")


def _mtp_present(config: config_lib.ModelConfig, names: Iterable[str]) -> bool:
    prefix = f"model.layers.{config.num_hidden_layers}."
    return any(n.startswith(prefix) and not _ignorable(n, config) for n in names)


def _check_tensor(reader: hf_shards.Reader, name: str, want: tuple[int, ...], param: str,
                  used: set[str]) -> None:
    """Checks one HF tensor's header (present, shape, float dtype; an FP8 weight's block scales)
    before any data is read; adds it and its scale to `used`."""
    if name not in reader.files:
        raise ValueError(f"{reader.path}: tensor {name!r} is missing (expected shape "
                         f"{list(want)}, for parameter {param})")
    stored, found = reader.header(name)
    if found != want:
        raise ValueError(f"{reader.path}: tensor {name!r} has shape {list(found)}, expected "
                         f"{list(want)}")
    if stored not in hf_shards.FLOAT_STORED:
        raise ValueError(f"{reader.path}: tensor {name!r} has dtype {stored}; expected one of "
                         f"{list(hf_shards.FLOAT_STORED)}")
    used.add(name)
    if stored != hf_shards.FP8:
        return
    scale = name + hf_shards.SCALE_SUFFIX
    if reader.block is None or len(want) != 2:
        raise ValueError(f"{reader.path}: tensor {name!r} is FP8 but "
                         + ("config.json has no quantization_config" if reader.block is None
                            else f"has {len(want)} dimensions (block scales need 2)"))
    blocks = [-(-n // b) for n, b in zip(want, reader.block)]
    if scale not in reader.files:
        raise ValueError(f"{reader.path}: FP8 tensor {name!r} has no {scale!r}")
    stored, found = reader.header(scale)
    if list(found) != blocks or stored not in ("F32", "BF16", "F16"):
        raise ValueError(f"{reader.path}: tensor {scale!r} is {stored} {list(found)}, expected "
                         f"float {blocks} ({list(reader.block)} blocks of {list(want)})")
    used.add(scale)


_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def checkpoint_dtype(path: str) -> str:
    """The dtype the checkpoint's weights are stored in ("bfloat16", "float32", ...), read
    from the embedding tensor's header (no tensor data is read)."""
    ckpt = _Checkpoint(path)
    name = "model.embed_tokens.weight"
    if name not in ckpt.files:
        raise ValueError(f"{path}: tensor {name!r} is missing")
    with safe_open(os.path.join(path, ckpt.files[name]), framework="np") as f:
        stored = f.get_slice(name).get_dtype()
    if stored not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{path}: tensor {name!r} is stored as {stored}; expected one of "
                         f"{sorted(_SAFETENSORS_DTYPES)}")
    return _SAFETENSORS_DTYPES[stored]


def load_hf_config(path: str, dtype: Any = None) -> config_lib.ModelConfig:
    """The ModelConfig that `load_hf(path, dtype)` returns, from config.json and the tensor
    headers only (no weights are read). `dtype` None means the checkpoint's own dtype."""
    config_file = os.path.join(path, CONFIG_FILE)
    dtype = checkpoint_dtype(path) if dtype is None else dtype
    config = hf_config.config_from_hf(_read_json(config_file), config_file, dtype)
    if config.num_nextn_predict_layers and not _mtp_present(config, _Checkpoint(path).files):
        config = config.replace(num_nextn_predict_layers=0)
    return config


def param_shardings(config: config_lib.ModelConfig, mesh: jax.sharding.Mesh):
    """NamedShardings of the parameter tree of `config` on `mesh` (the logical-axis rules)."""
    return transformer.param_shardings(config, mesh)[1]


def load_hf(path: str, dtype: Any = jnp.float32, *, mesh: jax.sharding.Mesh | None = None,
            shardings=None, scan_layers: bool = False,
            stats: hf_shards.ReadStats | None = None) -> tuple[config_lib.ModelConfig, dict]:
    """Reads an HF checkpoint directory into (ModelConfig, params), each device's block alone.

    Args:
      path: a local directory with config.json and model.safetensors (or a sharded index).
      dtype: the dtype of the returned params (and of config.dtype / config.param_dtype);
        None keeps the checkpoint's own (`checkpoint_dtype`: a bfloat16 checkpoint stays
        bfloat16); the MoE balancing bias stays float32. FP8 weights (with block scales,
        `quantization_config`) are dequantised to it as they are read.
      mesh: shard the params on this mesh by the logical-axis rules (`param_shardings`).
      shardings: or an explicit tree of shardings matching the params; neither: the first
        local device.
      scan_layers: return the scanned tree (layers stacked per stack; config.scan_layers set).
      stats: filled with the host buffer sizes of the read (`hf_shards.ReadStats`).
    Returns:
      (config, params): every leaf a global jax.Array; each process reads only the slices its
      own devices hold.
    Raises:
      ValueError naming the file and field / tensor for unsupported or malformed input.
    """
    config_file = os.path.join(path, CONFIG_FILE)
    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a directory")
    if dtype is None:
        dtype = checkpoint_dtype(path)
    values = _read_json(config_file)
    config = hf_config.config_from_hf(values, config_file, dtype)
    config = config.replace(scan_layers=scan_layers)
    ckpt = _Checkpoint(path)
    _check_sizes(config, ckpt, config_file)
    if config.num_nextn_predict_layers and not _mtp_present(config, ckpt.files):
        config = config.replace(num_nextn_predict_layers=0)  # Announced but not shipped.
    reader = hf_shards.Reader(path, ckpt.files, hf_config.fp8_block(values, config_file), stats)
    abstract = traverse_util.flatten_dict(transformer.abstract_params(config))
    targets = _target_shardings(config, mesh, shardings, abstract)
    layouts, used = {}, set()
    for leaf_path, leaf in abstract.items():  # every header checked before any data is read
        layouts[leaf_path] = lay = layout(leaf_path, leaf.shape, config)
        for name in lay.names.flat:
            _check_tensor(reader, name, _hf_shape(leaf.shape, lay), "/".join(leaf_path), used)
    extra = sorted(n for n in ckpt.files if n not in used and not _ignorable(n, config))
    if extra:
        raise ValueError(f"{path}: unexpected tensor(s) {extra[:5]}{' ...' if len(extra) > 5 else ''}"
                         f" ({len(extra)} in all) that this config does not use")
    params = {}
    try:
        for leaf_path, leaf in abstract.items():
            keep_f32 = leaf_path[-1] == moe.BIAS  # The balancing bias stays float32 (moe.Router).
            params[leaf_path] = hf_shards.build(reader, layouts[leaf_path], leaf.shape,
                                               jnp.float32 if keep_f32 else jnp.dtype(dtype),
                                               targets[leaf_path])
    finally:
        reader.close()
    return config, traverse_util.unflatten_dict(params)


def _target_shardings(config, mesh, shardings, abstract: Mapping) -> dict:
    """Flat path -> Sharding: from `shardings`, else `mesh`'s rules, else the first local device."""
    if shardings is None and mesh is not None:
        shardings = param_shardings(config, mesh)
    if shardings is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return dict.fromkeys(abstract, one)
    flat = traverse_util.flatten_dict(dict(shardings))
    if flat.keys() != abstract.keys():
        missing = sorted(set(abstract) - set(flat))
        raise ValueError(f"load_hf: shardings do not match the parameter tree (missing "
                         f"{['/'.join(p) for p in missing[:3]]}; scan_layers={config.scan_layers})")
    return flat


# ---------------------------------------------------------------------------------------------
# save_hf.


_Entry = tuple[tuple[str, ...], tuple[int, ...], bool]  # (param path, stack position, transpose)


def _entries(config: config_lib.ModelConfig, flat: Mapping) -> dict[str, _Entry]:
    """HF name -> where its values live in our flat params, in file order, after checking the
    tree against the config (scanned or not)."""
    expected = traverse_util.flatten_dict(transformer.abstract_params(config))
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(f"save_hf: params do not match the config (missing "
                         f"{['/'.join(p) for p in missing[:3]]}, unexpected "
                         f"{['/'.join(p) for p in extra[:3]]}; scan_layers={config.scan_layers})")
    out = {}
    for path, leaf in flat.items():
        if tuple(leaf.shape) != tuple(expected[path].shape):
            raise ValueError(f"save_hf: parameter {'/'.join(path)} has shape {list(leaf.shape)}, "
                             f"expected {list(expected[path].shape)}")
        lay = layout(path, leaf.shape, config)
        for pos in np.ndindex(*lay.names.shape):
            out[str(lay.names[pos])] = (path, pos, lay.transpose)
    # The embedding and output head that the released checkpoints repeat in each MTP layer.
    head = "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
    for k in range(config.num_nextn_predict_layers):
        prefix = f"model.layers.{config.num_hidden_layers + k}."
        out[prefix + "embed_tokens.weight"] = out["model.embed_tokens.weight"]
        out[prefix + "shared_head.head.weight"] = out[head]
    return out


def _fetch(flat: Mapping, entry: _Entry) -> np.ndarray:
    """One HF tensor on the host, gathered alone (every process must call this in order)."""
    path, pos, transpose = entry
    leaf = flat[path]
    array = hf_shards.gather(leaf[pos] if pos else leaf)
    return np.ascontiguousarray(array.T if transpose else array)


def _shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Groups tensor names, in order, into shards of at most `max_shard_bytes` (one tensor
    larger than that gets a shard of its own)."""
    shards, size = [[]], 0
    for name, nbytes in sizes.items():
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_weights(flat: Mapping, entries: Mapping[str, _Entry], directory: str | None,
                   max_shard_bytes: int):
    """Writes the weights shard file by shard file, gathering one tensor at a time; host memory
    holds at most one output file. `directory` None: gather only (processes other than 0)."""
    sizes = {n: int(np.prod(flat[p].shape[len(pos):])) * jnp.dtype(flat[p].dtype).itemsize
             for n, (p, pos, _) in entries.items()}
    shards = _shards(sizes, max_shard_bytes)
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        file = WEIGHTS_FILE if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: _fetch(flat, entries[n]) for n in names}
        if directory is not None:
            save_file(tensors, os.path.join(directory, file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
        del tensors
    if len(shards) > 1 and directory is not None:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        _write_json(index, os.path.join(directory, INDEX_FILE))


def _write_json(values: Mapping, file: str):
    with open(file, "w", encoding="utf-8") as fh:
        json.dump(values, fh, indent=2, sort_keys=True)
        fh.write("\n")


def save_hf(config: config_lib.ModelConfig, params: Mapping, path: str, *,
            overwrite: bool = False, max_shard_bytes: int = 5 * 2**30,
            generation_config: Mapping[str, Any] | None = None,
            config_extra: Mapping[str, Any] | None = None,
            files: Iterable[str | os.PathLike] = ()) -> None:
    """Writes an HF checkpoint directory that `transformers.AutoModelForCausalLM` loads.

    Args:
      config, params: the model (the scanned tree when config.scan_layers); params keep their
        dtypes. Arrays may be sharded across processes: every process must call save_hf; each
        HF tensor is gathered alone (`hf_shards.gather`) and process 0 writes, holding at most
        one output file (`max_shard_bytes`) on the host; the others wait for it to finish.
      path: the directory to create, marked as r1jax's (`r1jax.ownership`). An existing
        non-empty one is an error unless `overwrite` and it is marked (an earlier save_hf):
        a directory r1jax did not create is never replaced.
      max_shard_bytes: above this total size, weights are sharded with an index file.
      generation_config: written as generation_config.json when given.
      config_extra: more config.json fields (e.g. bos_token_id, eos_token_id).
      files: files copied into the directory as they are (e.g. the tokenizer's).
    The directory is written under a temporary name beside `path` and renamed into place, so an
    interrupted save never leaves a half-written checkpoint at `path`.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"save_hf: {path} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path):
        ownership.check_owned(path, "overwrite the checkpoint directory")
        if not overwrite:
            raise FileExistsError(f"save_hf: {path} exists and is not empty; pass overwrite=True")
    flat = traverse_util.flatten_dict(dict(params))
    entries = _entries(config, flat)
    config_json = dict(hf_config.config_to_hf(config), **dict(config_extra or {}))
    if jax.process_index() != 0:  # gathers alongside process 0, which writes
        _write_weights(flat, entries, None, max_shard_bytes)
        multihost_utils.sync_global_devices(f"save_hf {path}")
        return
    tmp = str(ownership.temp_dir(os.path.dirname(path), os.path.basename(path),
                                 "models.hf.save_hf"))
    try:
        _write_json(config_json, os.path.join(tmp, CONFIG_FILE))
        if generation_config is not None:
            _write_json(generation_config, os.path.join(tmp, "generation_config.json"))
        for file in files:
            shutil.copyfile(file, os.path.join(tmp, os.path.basename(file)))
        _write_weights(flat, entries, tmp, max_shard_bytes)
        ownership.ordinary_permissions(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"save_hf {path}")


def _replace_dir(src: str, dst: str):
    """Renames `src` to `dst`; an existing `dst` is moved aside first and removed only after.
    A `dst` that is neither empty nor marked as r1jax's is refused (NotOwnedError)."""
    ownership.check_owned(dst, "replace")
    old = None
    if os.path.exists(dst):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=os.path.dirname(dst))
        os.rmdir(old)
        os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        if old is not None:
            os.rename(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # the marked (or empty) directory moved aside

