"""The built-in components, in one explicit table: kind -> name -> "module:Class"."""

BUILTINS: dict[str, dict[str, str]] = {
    "decoder": {
        "json": "agent.decoders.json_fields:JsonDecoder",
        "deepstream_full": "agent.decoders.camera:DeepStreamFullDecoder",
        "deepstream_minimal": "agent.decoders.camera:DeepStreamMinimalDecoder",
        "detections_json": "agent.decoders.camera:DetectionsJsonDecoder",
        "deepstream_analytics": "agent.decoders.camera:DeepStreamAnalyticsDecoder",
        "sparkplug_b": "agent.decoders.sparkplug:SparkplugDecoder",
    },
    "handler": {
        "onnx": "agent.handlers.onnx_model:OnnxHandler",
        "onnx_autoencoder": "agent.handlers.onnx_model:OnnxHandler",
        "onnx_classifier": "agent.handlers.typed:OnnxClassifier",
        "onnx_regression": "agent.handlers.typed:OnnxRegressor",
        "baseline": "agent.handlers.baseline:BaselineHandler",
    },
    "sink": {
        "mqtt": "agent.sinks.mqtt:MqttSink",
        "file": "agent.sinks.file:FileSink",
        "stdout": "agent.sinks.file:StdoutSink",
        "sparkplug_b": "agent.sinks.sparkplug:SparkplugSink",
    },
}
