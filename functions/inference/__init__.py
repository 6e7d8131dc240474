"""The inference function: an OpenAI-compatible HTTP API (``inference``) and a Kafka-triggered
worker (``inference_worker``) over one ONNX Runtime engine per process."""
