"""LoRA fine-tuning: chat rendering and masks, batches, the loss, the loop, checkpoints, preflight."""
