"""eval.save_examples for classifiers: a grid of clean / adversarial / perturbation images."""
from advbench.evaluation.plots import figure, perturbations, save_figure


def plot_examples(x, x_adv, y, pred, pred_adv, path, classes=None, notes=None, title: str = "") -> None:
    """Columns: examples. Rows: the clean image (true and predicted class), the adversarial one (its predicted
    class; red where the attack broke it), the perturbation amplified on one scale for the grid ("no perturbation"
    where nothing moved). An example misclassified clean is marked so in orange: it was never attacked, so it is not
    drawn as an attack's success."""
    n = len(x)

    def name(c):
        return classes[c] if classes and c < len(classes) else str(c)
    fig, axes = figure(3, n, figsize=(1.5 * n + 0.4, 5.0), squeeze=False)
    shown, amplified = perturbations(x_adv - x)
    for i in range(n):
        wrong_clean = pred[i] != y[i]
        note = (notes[i] if notes else "") or ("wrong clean" if wrong_clean else "")
        rows = [(x[i], f"true {name(y[i])}\npredicted {name(pred[i])}", "darkorange" if wrong_clean else "black"),
                (x_adv[i], "not attacked" if wrong_clean else f"adversarial: {name(pred_adv[i])}\n{note}",
                 "darkorange" if wrong_clean else ("red" if pred_adv[i] != y[i] else "black")),
                (shown[i], amplified[i], "black")]
        for ax, (image, label, colour) in zip(axes[:, i], rows):
            image = image.permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_title(label, fontsize=7, color=colour)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
