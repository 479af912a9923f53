"""Host cost of one generated token: Sequence.accept (incremental detokenizing, stop matching, the event put), on
the CPU, with the demo model's tokenizer (a byte-level BPE, as the synthetic GPU checkpoints use).

    PYTHONPATH=$PWD python3 bench/accept_cost.py [--cache-dir DIR] [--tokens 4000] [--repeats 5]

Two token streams: the ids of the shipped prose (text that decodes cleanly) and uniformly random ids (what a
random-weight model emits, <extra_N> ids and broken UTF-8 included). Prints microseconds per accepted token, best
of --repeats, with and without stop strings. The decode engine does this once per sequence per decode step on its
scheduler thread (awqd.engine.scheduler), sharing the interpreter lock with the gRPC server's loop.
"""

import argparse
import random
import time
from pathlib import Path

from transformers import AutoTokenizer

from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Job, Sequence
from awqd.models.demo import ensure_demo_model
from awqd.models.tokenizer import shipped_texts


def per_token_us(tokenizer, ids: list[int], stop: tuple[str, ...], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        params = GenerateParams("demo", "", (1,), len(ids) + 1, 0.0, None, 0, None, stop, "")
        seq = Sequence(Job(params, [1], None), tokenizer, frozenset())
        started = time.perf_counter()
        for token in ids:
            seq.accept(token)
        best = min(best, time.perf_counter() - started)
    return best * 1e6 / len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/awqd-accept-cost"))
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(ensure_demo_model(args.cache_dir))
    prose = tokenizer(" ".join(shipped_texts()), add_special_tokens=False).input_ids[: args.tokens]
    rng = random.Random(0)
    special = set(tokenizer.all_special_ids)
    random_ids = [rng.choice([i for i in range(len(tokenizer)) if i not in special]) for _ in range(args.tokens)]
    for name, ids in (("prose", prose), ("random ids", random_ids)):
        for stop in ((), ("\n\n", "###")):
            us = per_token_us(tokenizer, ids, stop, args.repeats)
            print(f"{name:10s} stops={len(stop)}: {us:6.1f} us per token over {len(ids)} tokens")


if __name__ == "__main__":
    main()
