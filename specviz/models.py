"""The only place that knows transformers: model pairs from presets (embedded GGUF, hub id, tiny random), the cache of
dequantised weights, tokenizers behind one small interface, and LM, a model with its own KV cache."""

from __future__ import annotations

import copy
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from specviz.config import PRESETS_DIR, ConfigError, model_preset
from specviz.embedded import EMBEDDED, assemble, embedded_model
from specviz.fastpath import draft_fast_path, target_fast_path, use_bf16_draft, use_cpu_fast_path
from specviz.gguf_convert import NotConvertible, convert
from specviz.kernels import kernel, prebuild
from specviz.weights import (
    CacheReader,
    evict,
    fingerprint,
    from_packed,
    packed_dtype,
    packed_file,
    packed_files,
    packed_ok,
    read_folder,
    save_packed,
    trim,
)

Progress = Callable[[float, str], None]  # (fraction 0..1, message)
CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Where dequantised models are cached; SPECVIZ_CACHE moves it."""
    return Path(os.environ.get("SPECVIZ_CACHE", Path.home() / ".cache" / "specviz"))


def pick_device(requested: str | None = None) -> torch.device:
    if requested and requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """bf16 on CUDA; float32 on CPU, where bf16 prefill measured about 4x slower."""
    if requested and requested != "auto":
        return {
            "float32": torch.float32,
            "float64": torch.float64,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[requested]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# ---------------------------------------------------------------- tokenizers


class Codec:
    """Text <-> token ids. `piece` gives a token's text in its context (byte-level BPE tokens can be partial characters)."""

    eos_ids: frozenset[int] = frozenset()
    chat: bool = False

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def vocab_key(self) -> str:
        """A fingerprint of the vocabulary: two codecs with the same key tokenize alike."""
        raise NotImplementedError

    def piece(self, prev: Sequence[int], tok: int) -> str:
        tail = list(prev[-4:])
        before = self.decode(tail)
        both = self.decode(tail + [tok])
        return both[len(before) :] if both.startswith(before) else self.decode([tok])


class CharCodec(Codec):
    """A toy tokenizer for tiny random models: one token per printable ASCII character, newline or tab, then <eos>."""

    def __init__(self) -> None:
        self.chars = string.printable[:95] + "\n\t"
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.eos = len(self.chars)
        self.eos_ids = frozenset({self.eos})
        self.vocab_size = len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, self.index["?"]) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else "" for i in ids)

    def piece(self, prev: Sequence[int], tok: int) -> str:
        return self.decode([tok])

    def vocab_key(self) -> str:
        return "chars:" + self.chars


class ByteCodec(Codec):
    """For random-weight models of a real model's shapes (GPU timing): text as UTF-8 bytes, ids 0-255; the other ids
    of the vocabulary decode as a middle dot. Their text is gibberish: only their cost is real."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) if 32 <= i < 127 or i in (9, 10) else "\u00b7" for i in ids)

    def piece(self, prev: Sequence[int], tok: int) -> str:
        return self.decode([tok])

    def vocab_key(self) -> str:
        return f"bytes:{self.vocab_size}"


class HFCodec(Codec):
    """A transformers tokenizer; the chat template is applied for instruct models."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], chat: bool) -> None:
        self.tok = tokenizer
        self.eos_ids = frozenset(i for i in eos_ids if i is not None)
        self.chat = chat and bool(getattr(tokenizer, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        if self.chat:
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def vocab_key(self) -> str:
        vocab = sorted(self.tok.get_vocab().items(), key=lambda kv: kv[1])
        return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


# ---------------------------------------------------------------- a model with its own KV cache


class LM:
    """A causal LM and one KV cache. forward() feeds only new tokens; crop() rolls the cache back."""

    def __init__(self, model: torch.nn.Module, name: str = "") -> None:
        from transformers import DynamicCache

        self.model = model.eval()
        self.name = name
        self._cache_cls = DynamicCache
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 32768))
        # the final hidden states of the last forward() (T, H), kept only while keep_hidden (helper heads read them)
        self.keep_hidden = False
        self.last_hidden: torch.Tensor | None = None
        norm = getattr(getattr(model, "model", None), "norm", None)
        if isinstance(norm, torch.nn.Module):
            norm.register_forward_hook(self._on_norm)
        self.reset()

    def _on_norm(self, module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        if self.keep_hidden:
            self.last_hidden = out[0]

    def reset(self) -> None:
        self.cache = self._cache_cls(config=self.model.config)

    @property
    def length(self) -> int:
        """Tokens held in the KV cache."""
        return self.cache.get_seq_length()

    @torch.inference_mode()
    def forward(self, ids: Sequence[int], keep: int | None = None) -> torch.Tensor:
        """Feed ids after the cached ones; logits of the last `keep` positions (all when None). -> (keep, V)"""
        x = torch.tensor([list(ids)], device=self.device)  # (1, T)
        out = self.model(input_ids=x, past_key_values=self.cache, use_cache=True, logits_to_keep=keep or 0)
        return out.logits[0]  # (keep, V)

    def reserve(self, n: int) -> None:
        """The run ahead needs n positions (a dynamic cache needs no notice; StaticLM fixes its attention window)."""

    def with_layers(self, kept: Sequence[int], name: str = "layerskip") -> LM:
        """A draft running only decoder layers `kept` of this model, sharing its weights, with its own cache."""
        from specviz.proposers.layer_skip import layer_view

        return LM(layer_view(self.model, kept), name)

    def crop(self, length: int) -> None:
        """Keep the first `length` cached tokens."""
        extra = self.length - length
        if extra > 0:
            self.cache.crop(-extra)

    @property
    def rows(self) -> int:
        """Rows (batch size) of the KV cache: 1 unless forward_rows() fed several."""
        return self.cache.layers[0].keys.shape[0] if self.length else 1

    @torch.inference_mode()
    def forward_rows(self, rows: Sequence[Sequence[int]], keep: int | None = None) -> torch.Tensor:
        """Feed M equally long continuations of the cached tokens at once, one cache row each; a one-row cache is
        repeated to M rows first (select_row() goes back to one). -> (M, keep, V)"""
        if len(rows) > 1 and self.rows == 1:
            self.cache.batch_repeat_interleave(len(rows))
        x = torch.tensor([list(r) for r in rows], device=self.device)  # (M, T)
        out = self.model(input_ids=x, past_key_values=self.cache, use_cache=True, logits_to_keep=keep or 0)
        return out.logits

    def select_row(self, row: int) -> None:
        """Keep only cache row `row`."""
        if self.rows > 1:
            self.cache.batch_select_indices(torch.tensor([row], device=self.device))


# ---------------------------------------------------------------- loading


@dataclass
class ModelPair:
    """What a preset loads: a target, an optional draft model, one codec, and how they were loaded."""

    preset: str
    target: LM
    draft: LM | None
    codec: Codec
    device: torch.device
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)  # load timings, sources, cache hits
    heads: Any = None  # the preset's trained helper heads (MedusaHeads), loaded on first use by the medusa strategy

    def close(self) -> None:
        """Free the weights (switching presets)."""
        self.target = self.draft = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_pair(
    preset: str,
    device: str | None = None,
    dtype: str | None = None,
    progress: Progress | None = None,
    spec: dict[str, Any] | None = None,
    fast: bool = True,
) -> ModelPair:
    """Load a preset's target and draft (fast=False: as transformers loads them, without our CPU fast paths). Errors
    the user can fix are ConfigError with a clear message."""
    spec = spec or model_preset(preset)
    progress = progress or (lambda f, m: None)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype or spec.get("dtype"))
    t0 = time.perf_counter()
    info: dict[str, Any] = {"preset": preset, "device": str(dev), "dtype": str(dt).replace("torch.", "")}
    if spec.get("heads"):
        info["heads_spec"] = dict(spec["heads"])
    cpu_fast = fast and use_cpu_fast_path(dev, dt)
    if cpu_fast:
        prebuild()

    def finish(model: torch.nn.Module, role: str, folder: Path | None = None) -> torch.nn.Module:
        """On the device, with the CPU fast path: done per model as it arrives, so packing the target overlaps
        reading the draft's weights. folder: the model's embedded cache, where its packed weights are saved once."""
        model = model.to(dev)
        key = "linear" if role == "target" else "draft_linear"
        cached = packed_dtype(model)
        if cached is not None:  # read from the packed cache: nothing to pack
            bf16 = cached == torch.bfloat16
            info[key] = f"specviz packed kernel{', bf16 weights' if bf16 else ''} (from the packed cache)"
        elif cpu_fast:
            if role == "draft" and use_bf16_draft(dev, dt):
                model, info[key] = draft_fast_path(model)
            else:
                model, info[key] = target_fast_path(model)
            trim()
            done = packed_dtype(model)
            if folder is not None and done is not None and not packed_ok(packed_file(folder, done)):
                progress(0.99, f"caching the {role}'s packed weights (once)")
                if save_packed(model, folder) is not None:
                    evict(sorted(folder.glob("*.safetensors")))  # later starts read the packed file instead
        return model

    wanted = {"target": torch.float32, "draft": torch.bfloat16 if use_bf16_draft(dev, dt) else torch.float32}

    if spec["target"].get("source") == "random":
        target, draft, codec = _tiny_pair(spec, dt)
        target, draft = finish(target, "target"), (finish(draft, "draft") if draft is not None else None)
    elif spec["target"].get("source") == "shapes":
        target = finish(_shapes_model(spec["target"], dt, dev), "target")
        draft = finish(_shapes_model(spec["draft"], dt, dev), "draft") if spec.get("draft") else None
        codec = ByteCodec(target.config.vocab_size)
    else:
        # read while transformers imports: the packed weights where cached, else the float32 ones
        reader = CacheReader(
            [_cached_file(spec["target"], wanted["target"] if cpu_fast else None)]
            + ([_cached_file(spec["draft"], wanted["draft"] if cpu_fast else None)] if spec.get("draft") else [])
        )
        try:
            target, tcodec, tinfo = _load_one(
                spec["target"], dt, spec.get("chat", True), _scaled(progress, 0.0, 0.7, "target"), reader=reader
            )
            info["target"] = tinfo
            target = finish(target, "target", _embedded_folder(tinfo))
            draft = None
            codec = tcodec
            if spec.get("draft"):
                draft, dcodec, dinfo = _load_one(
                    spec["draft"],
                    dt,
                    spec.get("chat", True),
                    _scaled(progress, 0.7, 1.0, "draft"),
                    share=tcodec,
                    reader=reader,
                )
                info["draft"] = dinfo
                shared = isinstance(dcodec, HFCodec) and isinstance(tcodec, HFCodec) and dcodec.tok is tcodec.tok
                if not shared and dcodec.vocab_key() != tcodec.vocab_key():
                    raise ConfigError(
                        f"preset {preset!r}: the draft's tokenizer differs from the target's; speculative decoding "
                        "needs one vocabulary for both"
                    )
                draft = finish(draft, "draft", _embedded_folder(dinfo))
        finally:
            reader.stop()
    wrap: Callable[[torch.nn.Module, str], Any] = LM
    if fast and dev.type == "cuda" and os.environ.get("SPECVIZ_GRAPHS", "1") != "0":
        wrap, info["linear"] = _gpu_fast_path(target)
    lms = [wrap(target, "target"), wrap(draft, "draft") if draft is not None else None]
    for lm in lms:  # compile and capture now, so that no visitor's timed run pays for it
        if lm is not None and hasattr(lm, "warm"):
            progress(0.99, f"compiling the {lm.name}'s GPU pass")
            lm.warm()
    info["load_s"] = round(time.perf_counter() - t0, 2)
    progress(1.0, "ready")
    return ModelPair(preset, lms[0], lms[1], codec, dev, dt, info)


def _gpu_fast_path(target: torch.nn.Module) -> tuple[Callable[[torch.nn.Module, str], Any], str]:
    """On CUDA, StaticLM (static KV cache, CUDA graphs, each one-row pass torch.compiled where Triton is installed;
    SPECVIZ_COMPILE=0: graphs only) for every model it supports, LM otherwise. -> (how to wrap a model, what was used)"""
    from specviz.static_lm import StaticLM, unsupported

    why = unsupported(target)
    if why:
        return LM, f"transformers (no static-cache path: {why})"
    compile_ = os.environ.get("SPECVIZ_COMPILE", "1") != "0" and importlib.util.find_spec("triton") is not None

    def wrap(model: torch.nn.Module, name: str) -> Any:
        return StaticLM(model, name, use_compile=compile_) if unsupported(model) is None else LM(model, name)

    return wrap, "static KV cache + CUDA graphs" + (" + torch.compile" if compile_ else "")


def _cached_file(src: dict[str, Any], packed: torch.dtype | None) -> Path | None:
    """What a warm start reads for an embedded model: its packed weights of dtype `packed` where cached and sound,
    else its float32 cache folder; None when it is not cached (or not embedded)."""
    if src.get("source") != "embedded" or src.get("name") not in EMBEDDED:
        return None
    folder, sha = _cache_folder(src["name"])
    if not _cache_ok(folder, sha):
        return None
    if packed is not None and packed_ok(packed_file(folder, packed)):
        return packed_file(folder, packed)
    return folder


def _embedded_folder(info: dict[str, Any]) -> Path | None:
    return Path(info["path"]) if info.get("source") == "embedded" and info.get("path") else None


def _from_folder(path: Path, dtype: torch.dtype, reader: CacheReader | None = None) -> Any:
    """A transformers model from a local folder of config.json + *.safetensors, read without a memory map (reader:
    where they, or the model's packed weights, are being read already)."""
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    cls = getattr(transformers, (config.architectures or ["AutoModelForCausalLM"])[0])  # imports its code: seconds
    packed = next((f for f in packed_files(path) if reader.reading(f)), None) if reader else None
    if packed is not None:
        state = reader.take(packed)
        if state is not None and kernel()[0] is not None:
            try:
                model = from_packed(cls, config, state)
            except Exception:  # e.g. another transformers' module layout: the float32 cache still works
                model = None
            if model is not None:
                if (path / "generation_config.json").is_file():
                    model.generation_config = transformers.GenerationConfig.from_pretrained(path)
                return model
        del state  # no kernel in this process after all, or unusable: load the float32 weights
    state = (reader.take(path) if reader else None) or read_folder(path)
    model = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
    if (path / "generation_config.json").is_file():  # eos ids and defaults, as from_pretrained(path) would read
        model.generation_config = transformers.GenerationConfig.from_pretrained(path)
    return model


def _scaled(progress: Progress, lo: float, hi: float, label: str) -> Progress:
    return lambda f, m: progress(lo + (hi - lo) * f, f"{label}: {m}")


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = ids if isinstance(ids, list) else [ids]
    extra = tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tokenizer.get_vocab() else None
    return sorted(i for i in {*ids, tokenizer.eos_token_id, extra} if i is not None)


def _load_one(
    src: dict[str, Any],
    dtype: torch.dtype,
    chat: bool,
    progress: Progress,
    share: HFCodec | None = None,
    reader: CacheReader | None = None,
) -> tuple[Any, HFCodec, dict]:
    """One model and its codec; `share`: a codec whose tokenizer to reuse when this model's tokenizer files are the
    same bytes (the embedded pair's are: building a Qwen tokenizer takes seconds); `reader`: where its cached weights
    are being read in the background."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = src.get("source")
    if kind == "embedded":
        path, info, fresh = cached_embedded(src["name"], progress)
        load_kw: dict[str, Any] = {}
    elif kind == "hub":
        path, info, load_kw, fresh = src["id"], {"source": "hub", "id": src["id"]}, {}, None
    else:
        raise ConfigError(f"unknown model source {kind!r}: use embedded, hub or random")
    try:
        progress(0.9, "loading weights")
        if share is not None and _same_tokenizer_files(Path(share.tok.name_or_path), Path(path)):
            tok = share.tok
        else:
            tok = AutoTokenizer.from_pretrained(path, **load_kw)
        if fresh is not None:  # just built: no need to read it back
            model = fresh.to(dtype)
        elif kind == "embedded":
            model = _from_folder(Path(path), dtype, reader)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **load_kw)
    except OSError as e:
        raise ConfigError(f"could not load model {path!r}: {str(e).splitlines()[0]}") from e
    return model, HFCodec(tok, _eos_ids(model, tok), chat), info


def _same_tokenizer_files(a: Path, b: Path) -> bool:
    """Same vocabulary files. The chat template may differ (the embedded pair's differ in one escaped brace of the
    tool-call text): a draft is fed the target's token ids and never encodes text itself."""
    names = ("tokenizer.json", "tokenizer_config.json")
    try:
        return a.is_dir() and b.is_dir() and all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    except OSError:
        return False


def cached_embedded(name: str, progress: Progress) -> tuple[Path, dict, Any]:
    """A transformers-loadable folder for an embedded GGUF model: built once (assemble, verify sha256, dequantise,
    save safetensors), then reused. A cache that fails its manifest check is rebuilt, never trusted.
    -> (folder, info, the float32 model when it was just built, else None)"""
    folder, sha = _cache_folder(name)
    m = embedded_model(name)
    if _cache_ok(folder, sha):
        return folder, {"source": "embedded", "name": name, "cache": "hit", "path": str(folder)}, None
    t0 = time.perf_counter()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = folder.with_name(folder.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    gguf = assemble(
        m, work / "model.gguf", lambda done, total: progress(0.3 * done / total, "assembling and checking sha256")
    )
    progress(0.3, "dequantising GGUF (once)")
    stages: dict[str, float] = {"assemble_s": round(time.perf_counter() - t0, 1)}
    try:
        model, tok, times = convert(gguf, progress)
        stages.update(times)
    except NotConvertible:  # an architecture our converter does not handle: transformers' loader (slow)
        tok = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name, dtype=torch.float32)
        # the weights are plain float32 now: drop the GGUF marker so save_pretrained writes safetensors
        model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer = None
    progress(0.8, "writing cache")
    t = time.perf_counter()
    gguf.unlink()
    model.save_pretrained(work)
    tok.save_pretrained(work)
    _write_manifest(work, m.sha256)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(work, folder)
    stages["write_s"] = round(time.perf_counter() - t, 1)
    info = {
        "source": "embedded",
        "name": name,
        "cache": "built",
        "build_s": round(time.perf_counter() - t0, 1),
        "build_stages": stages,
        "path": str(folder),
    }
    return folder, info, model


def _cache_folder(name: str) -> tuple[Path, str]:
    """(the cache folder of an embedded model, the sha256 of its source)"""
    return cache_dir() / f"{name}-v{CACHE_FORMAT}", embedded_model(name).sha256


def _write_manifest(folder: Path, source_sha: str) -> None:
    files = {p.name: fingerprint(p) for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / "specviz-manifest.json").write_text(
        json.dumps({"format": CACHE_FORMAT, "source_sha256": source_sha, "files": files}, indent=1)
    )


def _cache_ok(folder: Path, source_sha: str) -> bool:
    try:
        man = json.loads((folder / "specviz-manifest.json").read_text())
        if man.get("format") != CACHE_FORMAT or man.get("source_sha256") != source_sha or not man.get("files"):
            return False
        return all(fingerprint(folder / n) == fp for n, fp in man["files"].items())
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- tiny random models (tests, UI without real weights)


def tiny_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, init: float = 0.02) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=2048,
        initializer_range=init,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


def tiny_model(vocab_size: int, seed: int, dtype: torch.dtype = torch.float32, **cfg: Any) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(vocab_size, **cfg)).to(dtype).eval()


def _shapes_model(src: dict[str, Any], dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """Random weights with a real model's exact configuration (presets/shapes/*.json): every pass costs what the real
    model's costs, with no weights to ship. Built on `device` directly (initialising 1.5B weights on a CPU is slow)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = PRESETS_DIR / src["config"]
    try:
        config = AutoConfig.for_model(**json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise ConfigError(f"model shape file {path}: {e}") from e
    torch.manual_seed(int(src.get("seed", 0)))
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def perturbed_copy(model: torch.nn.Module, noise: float, seed: int) -> torch.nn.Module:
    """A draft that resembles the target: its weights plus Gaussian noise of relative size `noise`."""
    draft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * noise * p.std().clamp_min(1e-3))
    return draft


def _tiny_pair(spec: dict[str, Any], dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module | None, Codec]:
    codec = CharCodec()
    t = spec["target"]
    shape = {k: t[k] for k in ("hidden", "layers", "heads", "init") if k in t}
    target = tiny_model(codec.vocab_size, t.get("seed", 0), dtype, **shape)
    d = spec.get("draft") or {}
    draft = perturbed_copy(target, d.get("noise", 0.3), d.get("seed", 1)) if d else None
    return target, draft, codec
