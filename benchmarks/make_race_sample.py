"""Write a small JSONL sample of real RACE questions for GPU benchmarks (kept out of git: RACE's terms).

    python benchmarks/make_race_sample.py ../shared/data/race/RACE.tar.gz .bench/race_test.jsonl --n 600
"""

import argparse
import random

from mcgrpo.data import load_splits
from mcgrpo.fileio import write_jsonl
from mcgrpo.params import PrepareParams

parser = argparse.ArgumentParser()
parser.add_argument("tarball")
parser.add_argument("out")
parser.add_argument("--split", default="test")
parser.add_argument("--n", type=int, default=600)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

splits = load_splits(PrepareParams(source="race", path=args.tarball, config="all", train_split=args.split,
                                   eval_split=args.split))
records = splits["eval"]
sample = random.Random(args.seed).sample(records, min(args.n, len(records))) if args.n else records
write_jsonl(args.out, sample)
print(f"{len(sample)} of {len(records)} {args.split} questions -> {args.out}")
