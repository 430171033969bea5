"""Plot a contrastive-loss sweep (``bench_contrastive_loss.py --out FILE``): peak extra memory and forward +
backward time vs N per provider, with the plot ``clipfast bench`` draws (``clipfast.train.bench_report``).

    python bench/plot_contrastive_loss.py bench/results/contrastive_loss.json [--out PNG]
"""
import argparse
import json
import os

from clipfast.train.bench_report import plot_loss_memory


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="JSON list written by bench_contrastive_loss.py --out")
    ap.add_argument("--out", default=None, help="PNG path (default: the JSON's path with .png)")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        rows = json.load(f)
    print(plot_loss_memory(rows, args.out or os.path.splitext(args.results)[0] + ".png"))


if __name__ == "__main__":
    main()
