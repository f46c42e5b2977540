"""Which samples an eval asks, and how: a seeded draw of ``--limit`` samples, options
shuffled per sample with the seed (so a model's letter bias cannot pass for accuracy), and
the synthetic needle set made on demand."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

from magsrl.data.loaders import load_dataset
from magsrl.data.sample import Sample
from magsrl.data.scorers import gold_letter
from magsrl.data.synth import SynthConfig, generate
from magsrl.eval.config import SYNTHETIC, EvalConfig
from magsrl.proto.prompts import OPTION_LETTERS, option_texts

SYNTHETIC_DIR = "synthetic"


def draw(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """``limit`` samples chosen with ``seed``, in dataset order; all when limit is None or
    not smaller than the set. Ids must be unique: results are keyed by them."""
    counts = Counter(s.id for s in samples)
    if len(counts) != len(samples):
        dupes = sorted(i for i, n in counts.items() if n > 1)[:5]
        raise ValueError(f"sample ids repeat ({', '.join(dupes)}): results are keyed by id")
    if limit is None or limit >= len(samples):
        return list(samples)
    picked = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in picked]


def shuffle_options(sample: Sample, seed: int) -> Sample:
    """The sample with its options in a seeded order, its answer a letter in that order."""
    if not sample.options:
        return sample
    texts = option_texts(sample.options)  # labels the dataset put on would move with them
    order = list(range(len(texts)))
    # A per-sample stream: the order of one sample does not depend on which others exist.
    random.Random(f"{seed}:{sample.id}").shuffle(order)
    options = [texts[i] for i in order]
    answer = sample.answer
    if sample.scorer == "mc":
        old = OPTION_LETTERS.index(gold_letter(sample))
        answer = OPTION_LETTERS[order.index(old)]
    return sample.model_copy(update={"options": options, "answer": answer})


def synthetic_set(out: Path, n: int, seed: int, size: tuple[int, int]) -> Path:
    """The synthetic needle set for this eval under ``out/synthetic``; made once, and made
    again only when its config differs (the same seed gives the same bytes)."""
    config = SynthConfig(seed=seed, width=size[0], height=size[1])
    folder = out / SYNTHETIC_DIR
    data = folder / "data.jsonl"
    saved = folder / "synth_config.json"
    wanted = config.model_dump_json(indent=2) + "\n"
    same = data.exists() and saved.exists() and saved.read_text() == wanted
    if same and sum(1 for line in data.open() if line.strip()) == n:
        return data
    if folder.exists():
        shutil.rmtree(folder)  # ours alone: a stale scene must not outlive its config
    return generate(n, folder, config)


def load_samples(config: EvalConfig, synthetic_n: int) -> tuple[list[Sample], str]:
    """The samples as asked, and the dataset kind that read them."""
    if config.dataset == "nano":  # fresh held-out nano scenes (magsrl.eval.nano_set)
        from magsrl.eval.nano_set import DEFAULT_N, nano_set

        path = nano_set(config.out, config.limit or DEFAULT_N, config.seed)
        samples, kind = load_dataset(path, "jsonl"), "nano"
    elif config.dataset == SYNTHETIC:
        n = config.limit or synthetic_n
        path = synthetic_set(config.out, n, config.seed, config.synthetic_size)
        samples, kind = load_dataset(path, "jsonl"), SYNTHETIC
    else:
        from magsrl.data.loaders import detect_kind

        if not Path(config.dataset).exists():
            raise ValueError(
                f"{config.dataset}: no such file or folder; give a dataset path, or {SYNTHETIC}"
            )
        kind = detect_kind(config.dataset) if config.kind == "auto" else config.kind
        samples = load_dataset(config.dataset, kind, split=config.split)
    if not samples:
        raise ValueError(f"{config.dataset} holds no samples")
    chosen = draw(samples, config.limit, config.seed)
    return [shuffle_options(s, config.seed) for s in chosen], kind
