"""edge-agent plugin: bearing condition from high-rate vibration blocks."""

import json
from pathlib import Path

MODELS = Path(__file__).parent / "models"
MANIFEST = (
    json.loads((MODELS / "manifest.json").read_text())["models"]
    if (MODELS / "manifest.json").is_file()
    else {}
)
MODEL = MODELS / MANIFEST.get("bearing_cwru", {}).get("file", "bearing_cwru_int8.onnx")
