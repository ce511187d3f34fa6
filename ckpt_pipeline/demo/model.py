"""A tiny local causal LM and data set, so demos and tests never download anything.

The model is a character-level GPT-2 of about 100k parameters, built from a config and randomly
initialised; the tokenizer is a `tokenizers` WordLevel model over single characters.
Both are saved with `save_pretrained`, so the `Auto*` classes load them from a local folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

CORPUS_FILE = Path(__file__).with_name("corpus.txt")
UNK, PAD, EOS = "<unk>", "<pad>", "<eos>"
SPECIAL_TOKENS = (UNK, PAD, EOS)


def corpus_text() -> str:
    """Return the bundled English training corpus.

    Returns:
        The text of `corpus.txt`, which sits next to this module.
    """
    return CORPUS_FILE.read_text(encoding="utf-8")


def build_char_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """Build a character-level tokenizer whose vocabulary is the characters of `text`.

    Args:
        text: Text whose distinct characters form the vocabulary.

    Returns:
        A fast tokenizer with `<unk>`, `<pad>` and `<eos>` set; unseen characters map to `<unk>`.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in sorted(set(text)):
        vocab.setdefault(char, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # [\s\S] rather than "." so newlines become tokens too (Oniguruma has no "(?s)" flag).
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse joins tokens with no separator; the WordLevel default would put spaces between chars.
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, pad_token=PAD, eos_token=EOS
    )


def build_tiny_model(
    model_dir: Path,
    text: str | None = None,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 128,
    seed: int = 0,
) -> Path:
    """Build and save a tiny, randomly initialised character-level GPT-2 and its tokenizer.

    Args:
        model_dir: Folder to write to; created if missing.
        text: Text whose characters form the vocabulary; the bundled corpus when None.
        n_layer: Number of transformer blocks.
        n_embd: Hidden size.
        n_head: Attention heads; must divide `n_embd`.
        n_positions: Longest sequence the model accepts.
        seed: Seed for the weight initialisation, so the same arguments give the same weights.

    Returns:
        `model_dir`, loadable offline with `AutoTokenizer` and `AutoModelForCausalLM`.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer(corpus_text() if text is None else text)
    # Saved with the tokenizer so truncation never exceeds what the position table can embed.
    tokenizer.model_max_length = n_positions
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng seeds the initialisation without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Split text into consecutive chunks of at most `chunk_chars` characters.

    Args:
        text: Text to split.
        chunk_chars: Maximum chunk length; must be positive.

    Returns:
        Non-blank chunks in order.

    Raises:
        ValueError: If `chunk_chars` is not positive.
    """
    if chunk_chars <= 0:
        raise ValueError(f"chunk_chars must be positive, got {chunk_chars}")
    chunks = (text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars))
    return [chunk for chunk in chunks if chunk.strip()]


def write_jsonl_dataset(path: Path, text: str | None = None, *, chunk_chars: int = 200) -> Path:
    """Write text as a JSONL data set, one `{"text": chunk}` object per line.

    Args:
        path: File to write; parent folders are created.
        text: Text to chunk; the bundled corpus when None.
        chunk_chars: Characters per chunk.

    Returns:
        `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = chunk_text(corpus_text() if text is None else text, chunk_chars)
    lines = (json.dumps({"text": chunk}, ensure_ascii=False) for chunk in chunks)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


DEMO_CORPUS_CHARS = 8000  # more than the corpus holds: the demo uses all of it
"""Corpus prefix the overfitting demo trains on: small enough for the model to memorise."""

DEMO_CHUNK_CHARS = 128
"""Characters per demo example; equals the demo `max_length`, so nothing is truncated."""

DEMO_TRAINING: dict[str, int | float | str] = {
    "max_length": 128,
    "num_train_epochs": 40,
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "eval_strategy": "steps",
    "eval_steps": 10,
    "save_strategy": "steps",
    "save_steps": 10,
    "logging_steps": 5,
    "seed": 42,
}
"""Spec fields of the overfitting demo: the whole corpus in 50 examples (40 train, 10 eval),
5 steps an epoch, 200 steps, about 8 s on two CPU cores. Eval loss bottoms out near step 60
while the train loss keeps falling; the growing train/eval gap makes the multi-metric score
prefer an earlier checkpoint than the lowest eval loss does."""

DEMO_MODEL = {"n_layer": 2, "n_embd": 128, "n_head": 4}
"""Size of the demo model: large enough to memorise the demo text within 40 epochs."""


def prepare_overfit_demo(workdir: Path, job_id: str = "demo") -> dict:
    """Build the tiny model and data set and return a training spec that visibly overfits.

    Args:
        workdir: Folder for `model/`, `data.jsonl` and the training `output/`.
        job_id: Job id to put in the spec.

    Returns:
        A spec for `remote.training.run_training`; the run takes a few seconds on a CPU.
    """
    workdir = Path(workdir)
    text = corpus_text()[:DEMO_CORPUS_CHARS]
    return {
        "job_id": job_id,
        # The vocabulary comes from the whole corpus so the model matches any corpus slice.
        "model": str(build_tiny_model(workdir / "model", **DEMO_MODEL)),
        "dataset": str(
            write_jsonl_dataset(workdir / "data.jsonl", text, chunk_chars=DEMO_CHUNK_CHARS)
        ),
        "output_dir": str(workdir / "output"),
        **DEMO_TRAINING,
    }
