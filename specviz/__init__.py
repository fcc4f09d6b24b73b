"""specviz: an instrumented, lossless speculative-decoding engine and a live visualizer of it."""

__version__ = "0.1.0"
