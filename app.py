"""Entry point: `python app.py` serves the API and the page on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (7860)."""

import logging

import uvicorn

from gptoss_space.backends.local.zerogpu import spaces_module
from gptoss_space.settings import Settings

settings = Settings()
spaces_module(settings)  # on ZeroGPU, `spaces` must be imported before torch touches CUDA

from gptoss_space.http.app import create_app  # noqa: E402
from gptoss_space.http.serving import uvicorn_options  # noqa: E402

logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app(settings)

if __name__ == "__main__":
    # access_log=False: gptoss_space.http.access_log writes the line once each answer has ended.
    # uvicorn_options: h11 with bounded heads, keep-alive and connections (gptoss_space/serving.py).
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False,
                timeout_graceful_shutdown=settings.shutdown_grace_s + 5, **uvicorn_options(settings))
