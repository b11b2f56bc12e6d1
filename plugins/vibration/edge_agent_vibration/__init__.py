"""edge-agent plugin: bearing condition from spectral features of high-rate vibration."""

from pathlib import Path

MODEL = Path(__file__).parent / "models" / "bearing_lr.onnx"
