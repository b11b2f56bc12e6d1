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

# The plugins shipped in this repository (plugins/<dir>): kind -> name -> (distribution, dir).
# Read only for hints when a config names a component that is not installed; a test keeps
# it equal to the plugins' entry points.
PLUGIN_COMPONENTS: dict[str, dict[str, tuple[str, str]]] = {
    "decoder": {"vibration_block": ("edge-stream-agent-vibration", "plugins/vibration")},
    "handler": {
        "bearing_condition": ("edge-stream-agent-vibration", "plugins/vibration"),
        "people_flow": ("edge-stream-agent-people-flow", "plugins/people_flow"),
    },
    "sink": {},
}
