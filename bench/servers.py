"""Servers the benchmark starts and stops: ours (app.py), transformers serve, llama.cpp's server, the scripted upstream."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = Path(tempfile.mkdtemp(prefix="gptoss-bench-"))


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    base: str  # http://127.0.0.1:PORT
    chat_path: str  # where chat requests go
    ready_path: str  # GET this until 200
    log: Path
    model: str | None = None  # the `model` field to send, where the server wants one

    @property
    def chat_url(self) -> str:
        return self.base + self.chat_path

    @property
    def ready_url(self) -> str:
        return self.base + self.ready_path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _spawn(name: str, cmd: list[str], env: dict, port: int, chat_path: str, ready_path: str, model=None) -> Server:
    log = LOGS / f"{name}.log"
    f = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=f, stderr=subprocess.STDOUT)
    return Server(name, proc, f"http://127.0.0.1:{port}", chat_path, ready_path, log, model)


def ours(port: int, cache_dir: str, **env: str) -> Server:
    """app.py exactly as a Space runs it; extra GPTOSS_* settings as keyword arguments."""
    settings = {"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GPTOSS_CACHE_DIR": cache_dir}
    settings.update({k.upper(): v for k, v in env.items()})
    return _spawn("ours", [sys.executable, "app.py"], settings, port, "/api", "/api")


def proxy(port: int, upstream_url: str) -> Server:
    env = {
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GPTOSS_BACKEND": "proxy",
        "GPTOSS_UPSTREAM_URL": upstream_url,
        "GPTOSS_LOG_LEVEL": "WARNING",
    }
    return _spawn("proxy", [sys.executable, "app.py"], env, port, "/api", "/api")


def upstream(port: int, chunks: int, interval_s: float) -> Server:
    cmd = [sys.executable, "-m", "bench.upstream", str(port), str(chunks), str(interval_s)]
    return _spawn("upstream", cmd, {}, port, "/v1/chat/completions", "/health")


def transformers_serve_available() -> str | None:
    """None when `transformers serve` can run here, else why not."""
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists():
        return "the transformers CLI is not installed"
    missing = [m for m in ("fastapi", "uvicorn", "openai", "rich") if importlib.util.find_spec(m) is None]
    return f"transformers[serving] is missing {', '.join(missing)}" if missing else None


def transformers_serve(port: int, model_dir: str, continuous_batching: bool) -> Server:
    exe = str(Path(sys.executable).parent / "transformers")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # where our server and the baselines run too
    cmd = [exe, "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--device", device]
    if continuous_batching:
        cmd.append("--continuous-batching")
    name = "transformers-serve-cb" if continuous_batching else "transformers-serve"
    return _spawn(name, cmd, {}, port, "/v1/chat/completions", "/health", model=model_dir)


def llama_cpp_available() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'llama-cpp-python[server]'; it compiles for several minutes)"
    missing = [m for m in ("sse_starlette", "starlette_context", "pydantic_settings") if importlib.util.find_spec(m) is None]
    return f"llama-cpp-python's server extras are missing: {', '.join(missing)}" if missing else None


def llama_cpp(port: int, gguf: str, threads: int) -> Server:
    """llama-cpp-python's OpenAI server on the same GGUF, with the GGUF's own chat template.

    It runs one request at a time (no batching across requests); --interrupt_requests False makes
    the others wait their turn instead of cutting off the running stream.
    """
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(threads), "--n_ctx", "4096", "--interrupt_requests", "False",
    ]
    return _spawn("llama-cpp", cmd, {}, port, "/v1/chat/completions", "/v1/models", model=None)


def fresh_dir() -> str:
    return tempfile.mkdtemp(prefix="gptoss-cold-")


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
