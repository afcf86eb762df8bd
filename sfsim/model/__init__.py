"""The transformer's arithmetic: architectures, per-block FLOPs and sizes, LoRA targets."""
