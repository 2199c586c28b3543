"""Evaluation of tool calls and narration on held-out DM turns, across base, fine-tuned and GGUF."""
