"""All configuration in one class: environment variables with the GPTOSS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Whose X-Forwarded-For is believed when GPTOSS_TRUSTED_PROXIES is unset. Off a Space: nobody (a peer on
# loopback or a private range may be any local process or neighbour, and would choose its identity).
# On a Space the app is reached only through Hugging Face's front proxy, which connects from the
# cluster's 10.0.0.0/8 network (request.client.host reads e.g. 10.16.3.80) and appends the visitor's
# address to X-Forwarded-For; see the README, "Client IP".
SPACE_TRUSTED_PROXIES = ["10.0.0.0/8"]


class Settings(BaseSettings):
    """Every knob of the app. Bounds here also feed the API validation and the UI sliders."""

    model_config = SettingsConfigDict(env_prefix="GPTOSS_", extra="ignore", populate_by_name=True)

    # Server (Gradio's convention, so `python app.py` runs unchanged on a Space).
    host: str = Field(
        "127.0.0.1",
        validation_alias=AliasChoices("GRADIO_SERVER_NAME", "GPTOSS_HOST", "host"),
        description="Address to listen on (GRADIO_SERVER_NAME).",
    )
    port: int = Field(
        7860,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("GRADIO_SERVER_PORT", "GPTOSS_PORT", "port"),
        description="Port to listen on (GRADIO_SERVER_PORT).",
    )

    # Backend and model.
    backend: Literal["local", "proxy"] = Field("local", description="local: transformers in-process; proxy: an upstream API.")
    model: str = Field("", description="Local directory or Hub id; empty means the embedded SmolLM2-135M-Instruct.")
    model_name: str = Field("", description="Public model name in answers; empty means the loaded model's id.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "gptoss-space",
        description="Where the converted embedded model is cached (save_pretrained).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bf16 on CUDA and on CPUs with bf16 support, else float32."
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Most sequences decoded together in the local backend.")
    max_running: int = Field(
        0, ge=0, le=100_000,
        description="Most generations running at once, all clients together (API and page); more wait in one FIFO "
        "(rate_limit_queue_total at most, 503 above); 0: twice max_batch_size.",
    )
    hf_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("HF_TOKEN", "GPTOSS_HF_TOKEN", "hf_token"),
        description="Hub token for gated models (HF_TOKEN). Never logged or shown.",
    )

    # Proxy backend.
    upstream_url: str = Field("", description="Full URL of the upstream chat endpoint (proxy mode).")
    upstream_api_key: SecretStr | None = Field(None, description="Bearer token for the upstream. Never logged or shown.")
    upstream_model: str = Field("", description="`model` sent upstream; empty sends none.")
    upstream_attempts: int = Field(3, ge=1, le=10, description="Attempts in all for a failing upstream call.")
    upstream_backoff_s: float = Field(0.5, ge=0.0, le=30.0, description="First retry delay; doubles each attempt.")
    upstream_connect_timeout_s: float = Field(5.0, gt=0, le=120, description="Upstream connect timeout.")
    upstream_read_timeout_s: float = Field(60.0, gt=0, le=3600, description="Upstream read timeout between bytes.")

    # Generation defaults and bounds (the API validates against these; the UI sliders use them).
    default_temperature: float = Field(0.8, ge=0.0, le=2.0, description="temperature when a request sends none.")
    default_top_p: float = Field(0.9, gt=0.0, le=1.0, description="top_p when a request sends none.")
    max_tokens_cap: int = Field(2048, ge=1, le=131072, description="Server cap on generated tokens (max_tokens -1 means this).")
    max_body_bytes: int = Field(1_000_000, ge=1024, le=100_000_000, description="Largest request body accepted (413 above).")
    max_messages: int = Field(256, ge=1, le=10_000, description="Most messages in one request.")
    max_total_chars: int = Field(200_000, ge=100, le=10_000_000, description="Most characters of message content in one request.")
    request_timeout_s: float = Field(300.0, gt=0, le=3600, description="Wall-clock limit of one generation.")

    # Prompting.
    system_prompt: str = Field("You are a helpful assistant.", description="Base system prompt; empty for none.")
    inject_system_prompt: bool = Field(True, description="Prepend the base system prompt.")
    inject_datetime: bool = Field(True, description="Prepend the current UTC date and time to the system message.")

    # Rate limiting (per client IP).
    rate_limit_enabled: bool = Field(True, description="Apply the per-client gate.")
    rate_limit_per_second: float = Field(2.0, gt=0, le=1000, description="Most request starts per client in any second.")
    rate_limit_min_interval_ms: int = Field(500, ge=0, le=60_000, description="Least time between two starts of a client.")
    rate_limit_queue_per_client: int = Field(8, ge=0, le=1000, description="Most waiting requests per client (429 above).")
    rate_limit_queue_total: int = Field(512, ge=1, le=100_000, description="Most waiting requests in all (503 above).")
    rate_limit_idle_evict_s: float = Field(60.0, gt=0, le=86_400, description="Forget a client idle this long.")
    trusted_proxies: list[str] | None = Field(
        None,
        description="Addresses/CIDRs whose X-Forwarded-For (and X-Forwarded-Host/Proto) is believed (JSON list); "
        f"unset: nobody, or {', '.join(SPACE_TRUSTED_PROXIES)} on a Hugging Face Space (SPACE_ID set).",
    )
    forwarded_max_hops: int = Field(
        8, ge=1, le=64, description="Most X-Forwarded-For entries read, from the right (a longer chain is cut)."
    )
    client_ipv6_prefix: int = Field(
        64, ge=8, le=128, description="IPv6 clients are counted per network of this prefix (a host usually holds a whole /64)."
    )
    space_id: str = Field(
        "",
        validation_alias=AliasChoices("SPACE_ID", "GPTOSS_SPACE_ID", "space_id"),
        description="The Hugging Face Space this runs in (SPACE_ID, set by Hugging Face); decides the trusted proxies' default.",
    )

    # The page's Gradio queue (its chat then goes through the same gate as /api).
    page_concurrency: int = Field(
        64, ge=1, le=10_000, description="Most page chat calls Gradio runs at once; more wait in its queue."
    )
    page_queue_size: int = Field(
        256, ge=1, le=100_000, description="Most page calls waiting in Gradio's queue (503 'queue full' above)."
    )
    page_sessions: int = Field(
        500, ge=10, le=100_000,
        description="Most page sessions whose state Gradio keeps; the least recently used is forgotten first.",
    )

    # Logging.
    log_level: str = Field("INFO", description="Python logging level.")
    log_content: bool = Field(False, description="Log prompts and answers (off: only sizes and timings).")

    # Spaces.
    zero_gpu: bool = Field(
        False,
        validation_alias=AliasChoices("SPACES_ZERO_GPU", "GPTOSS_ZERO_GPU", "zero_gpu"),
        description="On ZeroGPU hardware (SPACES_ZERO_GPU, set by Hugging Face): generation runs under @spaces.GPU.",
    )
    zero_gpu_base_s: int = Field(15, ge=1, le=600, description="ZeroGPU seconds asked for one generation besides its tokens.")
    zero_gpu_tokens_per_s: float = Field(20.0, gt=0, le=100_000, description="Decoding speed assumed when sizing a ZeroGPU request.")
    zero_gpu_max_duration_s: int = Field(120, ge=1, le=3600, description="Most ZeroGPU seconds one generation may ask for.")

    # Reliability.
    body_read_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Most seconds to receive a whole request body (408 for a client that trickles it)."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Most seconds from a connection's first byte to the end of its request head (closed past it)."
    )
    keep_alive_timeout_s: int = Field(5, ge=1, le=3600, description="An idle kept-alive connection is closed after this long.")
    max_header_bytes: int = Field(
        32_768, ge=4096, le=1_048_576, description="Largest request head (request line and headers) read; the connection is refused above."
    )
    max_connections: int = Field(
        1000, ge=1, le=1_000_000, description="Most connections and requests served at once; more are answered 503 at once."
    )
    stream_write_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="A stream whose client took no data for this long once the socket's buffers were full is closed "
        "and its generation cancelled (a client that stops reading frees its batch row).",
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, le=600, description="On SIGTERM, seconds running requests get to finish before they end with an error."
    )

    # Performance.
    engine_runner: Literal["auto", "lean", "transformers"] = Field(
        "auto",
        description="auto/lean: the lean Llama forward (packed weights, preallocated cache) where it applies (CPU Llama), "
        "loaded without importing transformers when the checkpoint is on disk, else transformers' continuous batching; "
        "transformers: always transformers' load and continuous batching.",
    )
    kv_cache_tokens: int = Field(
        0, ge=0, le=10_000_000,
        description="Tokens the paged KV cache of transformers' continuous batching holds, all requests together; "
        "0: max_batch_size x min(context, 4096) on CPU, what free GPU memory allows on CUDA.",
    )
    prefill_chunk_tokens: int = Field(
        0, ge=0, le=1_000_000,
        description="A longer prompt is prefilled in chunks of this many tokens while the other rows keep decoding "
        "(the most tokens in one forward pass); 0: 512 on the lean runner, 256 for transformers' continuous batching "
        "on CPU, transformers' choice on CUDA.",
    )
    torch_threads: int = Field(0, ge=0, le=1024, description="torch intra-op threads for the engine; 0 keeps torch's default (one per core).")
    prefix_cache_entries: int = Field(
        4, ge=0, le=64, description="Recent prompts whose KV the lean runner keeps to skip re-prefilling a shared start (0: off)."
    )
    burst_wait_ms: float = Field(
        25.0, ge=0, le=1000,
        description="An idle engine waits up to this long while requests keep arriving, to prefill a burst together (0: off).",
    )

    def running_limit(self) -> int:
        return self.max_running or 2 * self.max_batch_size

    def proxies(self) -> list[str]:
        """The trusted proxies in effect: the setting, else the Space's front proxy on a Space, else none."""
        if self.trusted_proxies is not None:
            return list(self.trusted_proxies)
        return list(SPACE_TRUSTED_PROXIES) if self.space_id else []

    def public_model_name(self, loaded_id: str) -> str:
        return self.model_name or loaded_id
