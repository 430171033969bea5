"""Plot bench_contrastive_loss's sweep: peak extra memory and forward+backward time vs N, per provider.

    python -m bench.plot_contrastive_loss bench/results/contrastive_loss.json [--out PNG]
"""
import argparse
import json
import os


def plot(rows, out):
    """Write a two-panel PNG (memory, time; log-log) from the sweep's result dicts; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for provider in sorted({r["provider"] for r in rows}):
        ok = sorted((r for r in rows if r["provider"] == provider and "error" not in r), key=lambda r: r["n"])
        if not ok:
            continue
        ns = [r["n"] for r in ok]
        ax_mem.plot(ns, [r["peak_extra_bytes"] / 2**20 for r in ok], "o-", label=provider)
        ax_time.plot(ns, [r["seconds"] for r in ok], "o-", label=provider)
    d = rows[0].get("d", "?") if rows else "?"
    for ax, label in ((ax_mem, "peak extra memory incl. gradients (MiB)"), (ax_time, "forward + backward (s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"batch N (d = {d}, fp32, CPU)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("CLIP contrastive loss: clipfast (chunked) vs OpenCLIP ClipLoss vs naive full matrix")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="JSON list written by bench_contrastive_loss --sweep --out")
    ap.add_argument("--out", default=None, help="PNG path (default: the JSON's path with .png)")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        rows = json.load(f)
    print(plot(rows, args.out or os.path.splitext(args.results)[0] + ".png"))


if __name__ == "__main__":
    main()
