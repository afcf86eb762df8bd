"""Real split fine-tuning: model loading and splitting, LoRA, task data and non-IID partitions."""

from trainer.heads import ClassificationHead, default_pooling
from trainer.lora import add_lora, default_targets, fedavg, load_lora_state_dict, lora_state_dict
from trainer.models import LoadedModel, load_model, tiny_model
from trainer.split import DevicePart, ServerPart, split_model

__all__ = [
    "ClassificationHead",
    "DevicePart",
    "LoadedModel",
    "ServerPart",
    "add_lora",
    "default_pooling",
    "default_targets",
    "fedavg",
    "load_lora_state_dict",
    "load_model",
    "lora_state_dict",
    "split_model",
    "tiny_model",
]
