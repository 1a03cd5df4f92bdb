"""clawdbot_runtime: the ONNX Runtime model server (Open Inference Protocol v2 + OpenAI /v1)."""

__version__ = "0.1.0"
