"""lwq: variable layer-wise quantization harness."""

__version__ = "0.1.0"
