"""From validated scenarios to a training dataset: conversations, split, augmentation, files."""

from dmforge.dataset.build import DatasetStats, build_dataset, corpus_fingerprint
from dmforge.dataset.conversation import conversation_fingerprint, to_conversation
from dmforge.dataset.split import split_scenarios

__all__ = [
    "DatasetStats",
    "build_dataset",
    "conversation_fingerprint",
    "corpus_fingerprint",
    "split_scenarios",
    "to_conversation",
]
