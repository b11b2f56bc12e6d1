"""edge-agent: MQTT in, windowed quantized ONNX inference, events and summaries out."""

__version__ = "0.1.0"
