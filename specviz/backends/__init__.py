"""Backends: how models are loaded and run (codecs, caches, GGUF, the CPU kernel, the GPU static path, layer surgery)."""
