"""``python -m clipfast.train [flags]`` = ``clipfast train [flags]`` (``eval``/``train``/``bench`` may also be named)."""
import sys

from clipfast.train.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0] not in ("train", "eval", "bench"):
        argv = ["train"] + argv
    sys.exit(main(argv))
