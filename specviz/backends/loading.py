"""The only place that knows how a preset becomes a ModelPair: embedded GGUF, hub id or random weights, each model put on its device and fast path."""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from specviz.backends.cache import (
    cached_embedded,
    cached_file,
    cached_gguf,
    cached_gguf_file,
    embedded_folder,
    gguf_folder,
    invalidate,
)
from specviz.backends.cache_reader import CacheReader
from specviz.backends.codecs import ByteCodec, Codec, HFCodec
from specviz.backends.devices import pick_device, pick_dtype
from specviz.backends.fastpath import draft_fast_path, target_fast_path, use_bf16_draft, use_cpu_fast_path
from specviz.backends.gguf_quant import (
    MODEL_FILE,
    NotQuantisable,
    describe,
    is_quant,
    quant_model,
    read_cached_blocks,
    read_in_background,
    to_float32,
)
from specviz.backends.kernels import kernel, prebuild
from specviz.backends.kernels import quant as qk
from specviz.backends.lm import LM
from specviz.backends.spaces import on_zero_gpu
from specviz.backends.tiny import shapes_model, tiny_pair
from specviz.backends.weights import (
    CorruptCache,
    drop_packed,
    evict,
    from_packed,
    packed_dtype,
    packed_file,
    packed_files,
    packed_ok,
    read_folder,
    save_packed,
    trim,
)
from specviz.core.config import ConfigError
from specviz.core.model import LanguageModel
from specviz.core.presets import model_preset
from specviz.core.progress import Progress


@dataclass
class ModelPair:
    """What a preset loads: a target, an optional draft model, one codec, and how they were loaded."""

    preset: str
    target: LanguageModel
    draft: LanguageModel | None
    codec: Codec
    device: torch.device
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)  # load timings, sources, cache hits
    heads: Any = None  # the preset's trained helper heads (MedusaHeads), loaded on first use by the medusa strategy

    def close(self) -> None:
        """Free the weights (switching presets)."""
        self.target = self.draft = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available() and not on_zero_gpu():  # ZeroGPU's main process must never initialise CUDA
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
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype or spec.get("dtype"))
    t0 = time.perf_counter()
    info: dict[str, Any] = {"preset": preset, "device": str(dev), "dtype": str(dt).replace("torch.", "")}
    if spec.get("heads"):
        info["heads_spec"] = dict(spec["heads"])
    cpu_fast = fast and use_cpu_fast_path(dev, dt)
    place = _Placement(dev, dt, cpu_fast, info, progress or (lambda f, m: None), cpu_fast and use_quant())
    if place.cpu_fast:
        sources = [spec[r].get("source") for r in ("target", "draft") if spec.get(r)]
        if place.quant and "embedded" in sources:
            qk.prebuild()  # seconds; the packed kernel is built only if some model needs it
        if not place.quant or any(s != "embedded" for s in sources):
            prebuild()
            place.progress(0.0, "starting; a first start on a machine also compiles our CPU kernel (about a minute)")
    source = spec["target"].get("source")
    if source == "random":
        target, draft, codec = tiny_pair(spec, dt)
        target, draft = place.finish(target, "target"), (place.finish(draft, "draft") if draft is not None else None)
    elif source == "shapes":
        target = place.finish(shapes_model(spec["target"], dt, dev), "target")
        draft = place.finish(shapes_model(spec["draft"], dt, dev), "draft") if spec.get("draft") else None
        codec = ByteCodec(target.config.vocab_size)
    else:
        target, draft, codec = _transformers_pair(preset, spec, place)
    wrap: Callable[[torch.nn.Module, str], Any] = LM
    if fast and dev.type == "cuda" and on_zero_gpu():  # captures and compiles would die with each GPU worker
        info["linear"] = "transformers (ZeroGPU: no CUDA graphs or torch.compile)"
    elif fast and dev.type == "cuda" and os.environ.get("SPECVIZ_GRAPHS", "1") != "0":
        wrap, info["linear"] = _gpu_fast_path(target)
    lms = [wrap(target, "target"), _draft(wrap, draft) if draft is not None else None]
    for lm in lms:  # compile and capture now, so that no visitor's timed run pays for it
        if lm is not None and hasattr(lm, "warm"):
            place.progress(0.99, f"compiling the {lm.name}'s GPU pass")
            lm.warm()
    info["load_s"] = round(time.perf_counter() - t0, 2)
    place.progress(1.0, "ready")
    return ModelPair(preset, lms[0], lms[1], codec, dev, dt, info)


def _draft(wrap: Callable[[torch.nn.Module, str], Any], model: torch.nn.Module) -> Any:
    """The draft's LM: a draft only guesses, so on the CPU path it skips exact attention (backends/attention.py)."""
    return LM(model, "draft", exact=False) if wrap is LM else wrap(model, "draft")


def use_quant() -> bool:
    """Whether embedded GGUF models run on the quantised kernel straight from their blocks (the default on the CPU
    fast path); SPECVIZ_QUANT=0 takes the float32 path instead (its float32 and packed caches, as before)."""
    return os.environ.get("SPECVIZ_QUANT", "1") != "0"


@dataclass
class _Placement:
    """Where the models of one load go (device, dtype, whether the CPU fast path packs them, whether embedded GGUF
    models run on the quantised kernel); `info` collects what was used, `progress` hears about slow steps."""

    dev: torch.device
    dt: torch.dtype
    cpu_fast: bool
    info: dict[str, Any]
    progress: Progress
    quant: bool = False

    def finish(self, model: torch.nn.Module, role: str, folder: Path | None = None) -> torch.nn.Module:
        """On the device, with the CPU fast path: done per model as it arrives, so packing the target overlaps
        reading the draft's weights. folder: the model's embedded cache, where its packed weights are saved once."""
        model = model.to(self.dev)
        key = "linear" if role == "target" else "draft_linear"
        cached = packed_dtype(model)
        if is_quant(model):  # already on its kernel, from the GGUF's blocks
            self.info[key] = describe(model)
        elif cached is not None:  # read from the packed cache: nothing to pack
            bf16 = cached == torch.bfloat16
            self.info[key] = f"specviz packed kernel{', bf16 weights' if bf16 else ''} (from the packed cache)"
        elif self.cpu_fast:
            if role == "draft" and use_bf16_draft(self.dev, self.dt):
                model, self.info[key] = draft_fast_path(model)
            else:
                model, self.info[key] = target_fast_path(model)
            trim()
            done = packed_dtype(model)
            if folder is not None and done is not None and not packed_ok(packed_file(folder, done)):
                self.progress(0.99, f"caching the {role}'s packed weights (once)")
                if save_packed(model, folder) is not None:
                    evict(sorted(folder.glob("*.safetensors")))  # later starts read the packed file instead
        return model


def _transformers_pair(
    preset: str, spec: dict[str, Any], place: _Placement
) -> tuple[torch.nn.Module, torch.nn.Module | None, Codec]:
    """An embedded or hub pair through transformers, each model finished as soon as it is built; cached weights are
    read in the background meanwhile (the packed ones where cached, else the float32 ones)."""
    bf16_draft = use_bf16_draft(place.dev, place.dt)
    wanted = {"target": torch.float32, "draft": torch.bfloat16 if bf16_draft else torch.float32}
    roles = ["target"] + (["draft"] if spec.get("draft") else [])
    if place.quant:  # the GGUFs' blocks, checked and repacked in the background (the C++ repacking frees the GIL)
        reader = CacheReader([cached_gguf_file(spec[r]) for r in roles], read=read_in_background)
    else:
        reader = CacheReader([cached_file(spec[r], wanted[r] if place.cpu_fast else None) for r in roles])
    chat = spec.get("chat", True)
    try:
        target, tcodec, tinfo = load_one(
            spec["target"],
            place.dt,
            chat,
            _scaled(place.progress, 0.0, 0.7, "target"),
            reader=reader,
            quant=place.quant,
        )
        place.info["target"] = tinfo
        target = place.finish(target, "target", embedded_folder(tinfo))
        if not spec.get("draft"):
            return target, None, tcodec
        progress = _scaled(place.progress, 0.7, 1.0, "draft")
        draft, dcodec, dinfo = load_one(
            spec["draft"], place.dt, chat, progress, share=tcodec, reader=reader, quant=place.quant
        )
        place.info["draft"] = dinfo
        shared = isinstance(dcodec, HFCodec) and isinstance(tcodec, HFCodec) and dcodec.tok is tcodec.tok
        if not shared and dcodec.vocab_key() != tcodec.vocab_key():
            raise ConfigError(
                f"preset {preset!r}: the draft's tokenizer differs from the target's; speculative decoding "
                "needs one vocabulary for both"
            )
        return target, place.finish(draft, "draft", embedded_folder(dinfo)), tcodec
    finally:
        reader.stop()


def _gpu_fast_path(target: torch.nn.Module) -> tuple[Callable[[torch.nn.Module, str], Any], str]:
    """On CUDA, StaticLM (static KV cache, CUDA graphs, each one-row pass torch.compiled where Triton is installed;
    SPECVIZ_COMPILE=0: graphs only) for every model it supports, LM otherwise. -> (how to wrap a model, what was used)"""
    from specviz.backends.static_lm import StaticLM, unsupported

    why = unsupported(target)
    if why:
        return LM, f"transformers (no static-cache path: {why})"
    compile_ = os.environ.get("SPECVIZ_COMPILE", "1") != "0" and importlib.util.find_spec("triton") is not None

    def wrap(model: torch.nn.Module, name: str) -> Any:
        return StaticLM(model, name, use_compile=compile_) if unsupported(model) is None else LM(model, name)

    return wrap, "static KV cache + CUDA graphs" + (" + torch.compile" if compile_ else "")


def from_folder(path: Path, dtype: torch.dtype, reader: CacheReader | None = None) -> Any:
    """A transformers model from a local folder of config.json + *.safetensors, read without a memory map (reader:
    where they, or the model's packed weights, are being read already)."""
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    cls = getattr(transformers, (config.architectures or ["AutoModelForCausalLM"])[0])  # imports its code: seconds
    packed = next((f for f in packed_files(path) if reader.reading(f)), None) if reader else None
    if packed is not None:
        try:
            state = reader.take(packed)
        except (ConfigError, OSError):  # damaged (never used) or gone: dropped, so this start packs and saves anew
            drop_packed(packed)
            state = None
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


def load_one(
    src: dict[str, Any],
    dtype: torch.dtype,
    chat: bool,
    progress: Progress,
    share: HFCodec | None = None,
    reader: CacheReader | None = None,
    quant: bool = False,
) -> tuple[Any, HFCodec, dict]:
    """One model and its codec; `share`: a codec whose tokenizer to reuse when this model's tokenizer files are the
    same bytes (the embedded pair's are: building a Qwen tokenizer takes seconds); `reader`: where its cached weights
    are being read in the background; quant: an embedded model runs on the quantised kernel, from its GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = src.get("source")
    if kind == "embedded" and quant:
        return _load_gguf(src["name"], chat, progress, share, reader)
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
            try:
                model = from_folder(Path(path), dtype, reader)
            except CorruptCache as e:  # a damaged float32 cache is never used: rebuilt now, once
                progress(0.1, f"cache damaged, rebuilding: {e}")
                invalidate(Path(path))
                path, info, fresh = cached_embedded(src["name"], progress)
                model, info["damaged"] = fresh.to(dtype), str(e)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **load_kw)
    except OSError as e:
        raise ConfigError(f"could not load model {path!r}: {str(e).splitlines()[0]}") from e
    return model, HFCodec(tok, _eos_ids(model, tok), chat), info


def _load_gguf(
    name: str, chat: bool, progress: Progress, share: HFCodec | None, reader: CacheReader | None
) -> tuple[Any, HFCodec, dict]:
    """An embedded model on the quantised kernel, from its GGUF cache folder (built first on a cold start; rebuilt
    once if found damaged). Where the kernel is unavailable or the file holds what it does not take, the GGUF is
    dequantised to float32 in memory instead (the float32 path's numbers, without its cache)."""
    from transformers import AutoTokenizer

    try:
        folder, info = cached_gguf(name, progress)
        progress(0.9, "loading weights")
        if share is not None and _same_tokenizer_files(Path(share.tok.name_or_path), folder):
            tok = share.tok
        else:
            tok = AutoTokenizer.from_pretrained(folder)
        gguf = folder / MODEL_FILE
        try:
            try:
                model = quant_model(folder, (lambda: reader.take(gguf)) if reader else None)
            except CorruptCache as e:  # a damaged cache is never used: rebuilt now, once
                progress(0.1, f"cache damaged, rebuilding: {e}")
                invalidate(folder)
                folder, info = cached_gguf(name, progress)
                model, info["damaged"] = quant_model(folder), str(e)
        except (NotQuantisable, RuntimeError) as e:  # RuntimeError: the kernel did not build
            from specviz.backends.gguf_convert import convert

            info["quant_declined"] = str(e)[:200]
            model = convert(folder / MODEL_FILE, progress)[0]
    except OSError as e:
        raise ConfigError(f"could not load model {name!r} from {gguf_folder(name)}: {str(e).splitlines()[0]}") from e
    return model, HFCodec(tok, _eos_ids(model, tok), chat), info


def float32_twin(pair: ModelPair, role: str = "target") -> LM:
    """The pair's quantised target (or draft) as the float32 path runs a target (what SPECVIZ_QUANT=0 loads), built
    anew from its GGUF cache: every weight dequantised exactly and packed for the float32 kernel; for side-by-side
    comparisons (bench, tests) without the float32 cache. About 7 GB for the embedded target."""
    lm = pair.target if role == "target" else pair.draft
    folder = embedded_folder(pair.info.get(role, {}))
    if folder is None or lm is None or not is_quant(lm.model):
        raise ConfigError(f"preset {pair.preset!r}: its {role} does not run on the quantised kernel")
    return LM(to_float32(quant_model(folder)), f"{role}-float32", exact=lm.exact)


def int8_twin(pair: ModelPair) -> ModelPair:
    """The pair with its quantised target and draft rebuilt on the int8 path (what SPECVIZ_QUANT=int8 loads), from
    their GGUF caches: for side-by-side comparisons with the exact path in one process (about 2 GB more)."""
    lms = {}
    for role, lm in (("target", pair.target), ("draft", pair.draft)):
        folder = embedded_folder(pair.info.get(role, {}))
        if lm is None or folder is None or not is_quant(lm.model):
            if role == "target":
                raise ConfigError(f"preset {pair.preset!r}: its target does not run on the quantised kernel")
            lms[role] = lm
            continue
        model = quant_model(folder, lambda f=folder: read_cached_blocks(f / MODEL_FILE, int8=True))
        lms[role] = LM(model, f"{role}-int8" if role == "target" else "draft", exact=lm.exact)
    info = {**pair.info, "linear": describe(lms["target"].model)}
    return dataclasses.replace(pair, target=lms["target"], draft=lms["draft"], info=info)


def _same_tokenizer_files(a: Path, b: Path) -> bool:
    """Same vocabulary files. The chat template may differ (the embedded pair's differ in one escaped brace of the
    tool-call text): a draft is fed the target's token ids and never encodes text itself."""
    names = ("tokenizer.json", "tokenizer_config.json")
    try:
        return a.is_dir() and b.is_dir() and all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    except OSError:
        return False
