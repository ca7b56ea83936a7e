"""Figures fit for a paper: labels from the metric names, eps ticks as given and apart, legends outside the data,
a log axis where a sweep spans decades, "n=1" for one seed, class names, and no amplification of nothing. Each
plotting function runs on small hand-made inputs and its matplotlib figure is inspected before it is saved."""
import math

import pytest
import torch

import advbench.evaluation.plots as plots
from advbench.eps import parse_eps
from advbench.report_views import GROUP, markdown, plot
from advbench.runtime.readable import label, metric_name

EPS = ["0", "1/255", "2/255", "4/255", "8/255", "16/255"]


@pytest.fixture
def figures(monkeypatch):
    """Each figure a module saves, kept instead of written; ``figures.watch(module)`` for each module."""
    kept = []

    class Kept(list):
        def watch(self, module):
            monkeypatch.setattr(module, "save_figure", lambda fig, path: self.append(fig))
    kept = Kept()
    yield kept
    for fig in kept:
        plots.plt.close(fig)


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def data_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def assert_legends_clear(fig):
    """Every legend lies inside the figure and over no axes (the data)."""
    renderer = drawn(fig)
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1
        assert fig.bbox.y0 - 1 <= box.y0 and box.y1 <= fig.bbox.y1 + 1
        assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in data_axes(fig))


def shown_ticks(ax):
    low, high = sorted(ax.get_xlim())
    return [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text() and
            low <= t.get_position()[0] <= high]


def assert_ticks_apart(ax):
    """No two visible x tick labels overlap: level ones by their boxes; labels rotated 45 degrees are parallel
    strips, apart when their anchors are sqrt(2) text heights apart."""
    renderer = drawn(ax.figure)
    labels = shown_ticks(ax)
    if all(t.get_rotation() == 0 for t in labels):
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
        return
    height = max(t.get_fontsize() for t in labels) * ax.figure.dpi / 72
    xs = [ax.transData.transform((t.get_position()[0], 0))[0] for t in labels]
    assert all(b - a >= math.sqrt(2) * height for a, b in zip(xs, xs[1:]))


def test_metric_keys_become_labels():
    assert label("clean_acc") == "Clean accuracy (%)"
    assert label("robust_map50") == "Robust mAP@0.5 (%)"
    assert label("robust_miou") == "Robust mIoU (%)"
    assert label("robust_macro_f1") == "Robust macro F1 (%)"
    assert label("val_robust_acc", percent=False) == "Validation robust accuracy"
    assert label("robust_miou_no_background") == "Robust mIoU no background (%)"  # an unknown tail kept as words
    assert metric_name("robust_map50") == "mAP@0.5" and label("map50") == "mAP@0.5 (%)"


def curve_rows(metrics=("clean_acc", "robust_acc")):
    clean, robust = metrics
    return [{"eps": e, "eps_value": parse_eps(e), clean: 0.9, "pgd": 0.9 - 0.05 * i, "apgd": 0.88 - 0.06 * i,
             robust: 0.87 - 0.07 * i} for i, e in enumerate(EPS)]


@pytest.mark.parametrize("metrics, measure", [(("clean_acc", "robust_acc"), "Accuracy"),
                                              (("clean_map50", "robust_map50"), "mAP@0.5"),
                                              (("clean_miou", "robust_miou"), "mIoU")])
def test_robustness_curve_names_its_metric_keeps_fractions_and_keeps_its_legend_off_the_data(
        figures, tmp_path, metrics, measure):
    figures.watch(plots)
    plots.plot_robustness_curve(curve_rows(metrics), ["pgd", "apgd"], metrics, tmp_path / "c.png", True,
                                parse_eps("8/255"))
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_ylabel() == f"{measure} (%)" and ax.get_title() == f"Robust {measure.replace('Acc', 'acc')} against eps"
    assert ax.get_ylim()[1] > 80  # percentages, not fractions
    assert [t.get_text() for t in ax.get_xticklabels()] == EPS  # as given
    assert "8/255" in [t.get_text() for t in shown_ticks(ax)]  # the run's own eps is never thinned away
    assert_ticks_apart(ax)
    assert_legends_clear(fig)


def test_robustness_curve_names_the_model_and_data_it_measured(figures, tmp_path):
    figures.watch(plots)
    metrics = ("clean_acc", "robust_acc")
    plots.plot_robustness_curve(curve_rows(metrics), ["pgd", "apgd"], metrics, tmp_path / "c.png", True,
                                parse_eps("8/255"), "small_cnn on fashion_mnist")
    (ax,) = figures[0].axes
    assert ax.get_title() == "Robust accuracy against eps\nsmall_cnn on fashion_mnist"
    assert_legends_clear(figures[0])


def test_crowded_eps_ticks_are_thinned_not_overlapped(figures, tmp_path):
    eps = [f"{k}/255" for k in range(41)]  # more than MAX_TICKS, but fractions: still labelled as given
    rows = [{"eps": e, "eps_value": parse_eps(e), "clean_acc": 0.9, "pgd": 0.5, "robust_acc": 0.5} for e in eps]
    figures.watch(plots)
    plots.plot_robustness_curve(rows, ["pgd"], ("clean_acc", "robust_acc"), tmp_path / "c.png", True,
                                parse_eps("7/255"))
    (ax,) = figures[0].axes
    assert_ticks_apart(ax)
    shown = [t.get_text() for t in shown_ticks(ax)]
    assert 5 <= len(shown) < len(eps) and {"0/255", "7/255", "40/255"} <= set(shown)


def test_training_curves_have_named_axes_integer_epochs_and_legends_beside(figures, tmp_path):
    rows = [{"epoch": 1, "train_loss": 0.12, "train_clean_acc": None, "train_adv_acc": None, "train_box": 0.07,
             "train_obj": 0.008, "val_clean_map50": 0.0, "val_robust_map50": 0.0}]
    figures.watch(plots)
    plots.plot_curves(rows, ("clean_map50", "robust_map50"), tmp_path / "curves.png")
    (fig,) = figures
    left, right = data_axes(fig)
    assert left.get_ylabel() == "Training loss" and right.get_ylabel() == "mAP@0.5 (%)"
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["Validation clean mAP@0.5",
                                                                     "Validation robust mAP@0.5"]
    drawn(fig)
    assert [t.get_text() for t in shown_ticks(right)] == ["1"]  # one epoch: no 0.96, 0.98, ...
    assert right.get_ylim()[0] == 0
    assert_legends_clear(fig)


def group(x, robust, setting, n_seeds=1, std=0.0, eps="8/255"):
    return dict.fromkeys(GROUP) | {"job": "train", "dataset": "digits", "model": "mlp", "training": "adversarial",
                                   "attack": "pgd", "eps": eps, "setting": setting, "x": x, "n_seeds": n_seeds,
                                   "clean_acc_mean": 0.9, "clean_acc_std": std, "robust_acc_mean": robust,
                                   "robust_acc_std": std}


def test_report_plot_puts_lr_on_a_log_axis_and_names_the_metric(figures, tmp_path):
    figures.watch(plots)
    groups = [group(lr, 0.3 + i / 10, f"lr={lr}") for i, lr in enumerate([1e-4, 1e-3, 1e-2, 1e-1])]
    plot(groups, tmp_path / "report.png", "lr", rows=[{"status": "finished", "metric": "robust_map50"}])
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "Robust mAP@0.5 (%)" and ax.get_xlabel() == "lr"
    assert_legends_clear(fig)


def test_report_plot_writes_eps_as_fractions_on_a_linear_axis(figures, tmp_path):
    figures.watch(plots)
    groups = [group(e, 0.8 - i / 10, f"eps={e}", eps=e) for i, e in enumerate(EPS)]
    plot(groups, tmp_path / "report.png", "eps")
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_xscale() == "linear" and ax.get_ylabel() == "Robust accuracy (%)"
    assert [t.get_text() for t in ax.get_xticklabels()] == EPS
    assert_ticks_apart(ax)
    assert_legends_clear(fig)


def test_report_md_says_n_1_instead_of_a_zero_spread_for_one_seed():
    text = markdown([], [group("8/255", 0.4, "eps=8/255"), group("2/255", 0.65, "eps=2/255", n_seeds=2, std=0.0707)])
    assert "| 1 | 90.00% (n=1) | 40.00% (n=1) |" in text
    assert "| 2 | 90.00 ± 7.07% | 65.00 ± 7.07% |" in text
    assert "± 0.00%" not in text


def test_perturbation_titles_say_no_perturbation_where_nothing_moved():
    delta = torch.zeros(3, 1, 4, 4)
    delta[1] = 8 / 255
    delta[2, 0, 0, 0] = 1e-9  # float noise: not a perturbation
    shown, titles = plots.perturbations(delta)
    assert titles == ["no perturbation", "perturbation ×16", "no perturbation"]
    assert shown[0].eq(0.5).all() and shown[1].eq(1.0).all()
    assert plots.perturbations(torch.zeros(2, 3, 4, 4))[1] == ["no perturbation"] * 2


def titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_classification_grid_names_classes_and_amplifies_nothing_it_did_not_attack(figures, tmp_path):
    import advbench.tasks.classification.plots as grid
    figures.watch(grid)
    x = torch.rand(2, 1, 8, 8) * 0.5
    grid.plot_examples(x, x.clone(), [0, 1], [0, 0], [0, 0], tmp_path / "g.png", classes=["cat", "dog"])
    (fig,) = figures
    assert not any("delta x" in t or "×" in t for t in titles(fig))
    assert titles(fig).count("no perturbation") == 2 and "true dog\npredicted cat" in titles(fig)


def test_detection_grid_says_no_perturbation_and_keeps_its_legend_off_the_images(figures, tmp_path):
    import advbench.tasks.detection.plots as detection
    figures.watch(detection)
    x = torch.rand(2, 3, 16, 16)
    targets = [{"boxes": torch.tensor([[2.0, 2.0, 9.0, 9.0]]), "labels": torch.tensor([1])}] * 2
    found = [{"boxes": torch.tensor([[2.0, 3.0, 9.0, 9.0]]), "labels": torch.tensor([0]),
              "scores": torch.tensor([0.9])}] * 2
    detection.plot_detections(x, x.clone(), targets, found, found, ["circle", "square"], 0.25, tmp_path / "d.png")
    (fig,) = figures
    assert titles(fig)[-2:] == ["no perturbation", "no perturbation"]
    assert not any("delta x" in t for t in titles(fig))
    assert_legends_clear(fig)
    detection.plot_detections(x, (x + 0.1).clamp(0, 1), targets, found, found, ["circle", "square"], 0.25,
                              tmp_path / "d.png")
    assert all(t.startswith("perturbation ×") for t in titles(figures[1])[-2:])


def test_segmentation_grid_names_classes_below_the_images(figures, tmp_path):
    import advbench.tasks.segmentation.plots as segmentation
    figures.watch(segmentation)
    x = torch.rand(2, 3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, 2:5, 2:5] = 1
    segmentation.plot_segmentations(x, x.clone(), masks, masks, masks, ["background", "square"],
                                    tmp_path / "s.png")
    (fig,) = figures
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["background", "square"]
    assert titles(fig).count("no perturbation") == 2
    assert_legends_clear(fig)


def test_text_saliency_names_the_classes(figures, tmp_path):
    import advbench.tasks.text.saliency as saliency
    from advbench.models import TextCNN
    from advbench.tasks.text import TextClassification
    figures.watch(saliency)
    torch.manual_seed(0)
    vocab = ["<pad>", "the", "film", "was", "good", "bad"]
    task = TextClassification(2, ["negative", "positive"], vocab)
    ids, y = torch.tensor([[1, 2, 3, 4, 0], [1, 2, 3, 5, 0]]), torch.tensor([1, 0])
    saliency.write_text_saliency(TextCNN((5,), 2, vocab_size=len(vocab)).eval(), (ids, y), task, vocab, 2, "cpu",
                                 tmp_path)
    (fig,) = figures
    heads = [ax.get_title(loc="left") for ax in fig.axes]
    assert heads[0].startswith("true: positive, predicted: ") and heads[1].startswith("true: negative, predicted: ")
    page = (tmp_path / "saliency.html").read_text()
    assert "<p><b>y=positive pred=" in page and "<p><b>y=negative pred=" in page
