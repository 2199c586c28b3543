"""LoRA fine-tuning on the app contract's samples: token weights, batches, the loss, the frozen layers' cache,
the loop, checkpoints, the preflight."""
