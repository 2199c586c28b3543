"""Deployment into the React Native app: the GGUF in assets/models and the values for cactus.ts."""
