"""plot_metrics writes loss/lr/accuracy PNGs from a metrics.jsonl, tolerating bad lines and missing data."""
import json

from PIL import Image

from clipfast.train.plots import plot_metrics, read_metrics


def _write(path, records, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(extra_lines))


def test_all_three_plots(tmp_path):
    recs = [{"step": s, "epoch": s / 10, "train/loss": 3 - s / 10, "train/contrastive_loss": 3 - s / 10,
             "train/lr": 1e-3 * min(1, s / 5)} for s in range(1, 21)]
    recs += [{"step": 10 * e, "epoch": e, "val/zeroshot_top1": 0.2 * e, "val/zeroshot_top5": 0.4 * e,
              "val/image_to_text_R@1": 0.1 * e, "val/chance_top1": 1 / 30} for e in (1, 2)]
    _write(tmp_path / "metrics.jsonl", recs, extra_lines=["{not json\n", "\n"])
    paths = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")
    assert [p.name for p in paths] == ["loss.png", "lr.png", "accuracy.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
            lo, hi = im.convert("L").getextrema()
            assert hi - lo > 50  # something was drawn
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 22


def test_only_what_has_data_and_missing_file(tmp_path):
    _write(tmp_path / "m.jsonl", [{"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.5}])
    assert [p.name for p in plot_metrics(tmp_path / "m.jsonl", tmp_path / "out")] == ["loss.png"]
    assert plot_metrics(tmp_path / "absent.jsonl", tmp_path / "out2") == []
    _write(tmp_path / "empty.jsonl", [])
    assert plot_metrics(tmp_path / "empty.jsonl", tmp_path / "out3") == []
