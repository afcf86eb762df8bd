"""Models: loading offline, splitting at a cut, LoRA, task heads and decomposed backward."""
