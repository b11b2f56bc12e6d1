"""The built-in components, in one explicit table: kind -> name -> "module:Class"."""

BUILTINS: dict[str, dict[str, str]] = {
    "decoder": {
        "json": "agent.decoders.json_fields:JsonDecoder",
    },
    "handler": {
        "onnx": "agent.handlers.onnx_model:OnnxHandler",
        "onnx_autoencoder": "agent.handlers.onnx_model:OnnxHandler",
    },
    "sink": {
        "mqtt": "agent.sinks.mqtt:MqttSink",
        "file": "agent.sinks.file:FileSink",
        "stdout": "agent.sinks.file:StdoutSink",
    },
}
