"""Real split fine-tuning: model loading and splitting, LoRA, task data and non-IID partitions."""

from trainer.data.partition import PartitionSpec, parse_partition, partition, partition_table
from trainer.data.tasks import TaskData, encode, encode_prompts, gsm8k_final_number, load_task
from trainer.model.heads import ClassificationHead, default_pooling
from trainer.model.loading import LoadedModel, load_model, tiny_model
from trainer.model.lora import add_lora, default_targets, fedavg, load_lora_state_dict, lora_state_dict
from trainer.model.split import DevicePart, ServerPart, split_model

__all__ = [
    "ClassificationHead",
    "DevicePart",
    "LoadedModel",
    "PartitionSpec",
    "ServerPart",
    "TaskData",
    "add_lora",
    "default_pooling",
    "default_targets",
    "encode",
    "encode_prompts",
    "fedavg",
    "gsm8k_final_number",
    "load_lora_state_dict",
    "load_model",
    "load_task",
    "lora_state_dict",
    "parse_partition",
    "partition",
    "partition_table",
    "split_model",
    "tiny_model",
]
