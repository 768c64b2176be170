"""gptoss-space: a rate-limited, OpenAI-compatible chat API and chat demo in one Gradio app."""
