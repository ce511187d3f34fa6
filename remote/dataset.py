"""The training data: texts from a JSONL data set, their train/eval split, tokenised blocks.

Embedded verbatim in the pod script (see `remote.render`) like `remote.training`, so it depends
only on the standard library, torch and transformers and has no `from __future__` import.
"""

import json
import random
import urllib.request
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

URL_TIMEOUT_S = 60.0


class DatasetError(ValueError):
    """The data set cannot be read or has a malformed line."""


def _read_dataset_lines(dataset: str) -> list[str]:
    if dataset.startswith(("http://", "https://")):
        with urllib.request.urlopen(dataset, timeout=URL_TIMEOUT_S) as response:
            return response.read().decode("utf-8").splitlines()
    try:
        return Path(dataset).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read data set {dataset!r}: {exc}") from exc


def _line_text(line: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg})") from exc
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise DatasetError(f"{where}: no 'text' string in this line")
    return text


def load_texts(dataset: str) -> list[str]:
    """Read the `text` of every line of a JSONL data set.

    Args:
        dataset: Local path, or http(s) URL fetched with urllib.

    Returns:
        The texts in file order; blank lines are skipped.

    Raises:
        DatasetError: If the file cannot be read, a line is not a JSON object with a `text`
            string, or there are no texts at all.
        urllib.error.URLError: If a URL cannot be fetched.
    """
    texts = [
        _line_text(line, f"{dataset} line {number}")
        for number, line in enumerate(_read_dataset_lines(dataset), start=1)
        if line.strip()
    ]
    if not texts:
        raise DatasetError(f"data set {dataset!r} holds no texts")
    return texts


def split_texts(texts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split texts into train and eval sets, the same way for the same seed.

    Args:
        texts: All texts; at least two.
        eval_fraction: Share held out for evaluation, in (0, 1).
        seed: Seed of the shuffle.

    Returns:
        `(train_texts, eval_texts)`, each non-empty.

    Raises:
        DatasetError: If there are fewer than two texts.
    """
    if len(texts) < 2:
        raise DatasetError(
            f"need at least 2 texts to hold one out for evaluation, got {len(texts)}"
        )
    order = list(range(len(texts)))
    # A private Random keeps the split independent of whatever else consumed the global RNG.
    random.Random(seed).shuffle(order)
    n_eval = min(len(texts) - 1, max(1, round(len(texts) * eval_fraction)))
    eval_texts = [texts[i] for i in sorted(order[:n_eval])]
    train_texts = [texts[i] for i in sorted(order[n_eval:])]
    return train_texts, eval_texts


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-length causal LM examples: input_ids, attention_mask and labels tensors."""

    def __init__(self, encodings: dict[str, torch.Tensor]) -> None:
        self.encodings = encodings

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.encodings.items()}


def tokenize_blocks(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> BlockDataset:
    """Tokenise texts into blocks of exactly `max_length` tokens with causal LM labels.

    Args:
        texts: Texts, one example each.
        tokenizer: Tokenizer with a pad token.
        max_length: Block length; longer texts are truncated, shorter ones padded.

    Returns:
        A data set whose labels equal input_ids except -100 at padding, so padding adds no loss.
    """
    encodings = tokenizer(
        texts,
        max_length=max_length,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )
    labels = encodings["input_ids"].clone()
    # Mask by attention rather than pad id: for hub models the pad token is often the eos token.
    labels[encodings["attention_mask"] == 0] = -100
    return BlockDataset(
        {
            "input_ids": encodings["input_ids"],
            "attention_mask": encodings["attention_mask"],
            "labels": labels,
        }
    )
