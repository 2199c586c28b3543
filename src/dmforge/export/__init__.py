"""GGUF export with llama.cpp of the app's vintage, quantization, and verification."""
