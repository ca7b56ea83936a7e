"""Typed schemas for the configuration, registered in Hydra's ConfigStore; the YAML in conf/ fills them in."""
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from advbench.runtime import rundir


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Amp(Enum):
    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"



class Loss(Enum):
    ce = "ce"
    dlr = "dlr"
    segpgd = "segpgd"  # segmentation: SegPGD's weighting of right and wrong pixels
    cospgd = "cospgd"  # segmentation: CosPGD's cosine weighting



class Target(Enum):
    input = "input"
    embedding = "embedding"
    embedding_weights = "embedding_weights"


class Goal(Enum):
    truth = "truth"
    predictions = "predictions"
    empty = "empty"


class Relabel(Enum):
    none = "none"
    ml = "ml"
    ll = "ll"


class BnMode(Enum):
    eval = "eval"
    train = "train"



class GuardAction(Enum):
    stop = "stop"
    rollback = "rollback"


class Schedule(Enum):
    constant = "constant"
    piecewise = "piecewise"
    onecycle = "onecycle"
    cosine = "cosine"


@dataclass
class DatasetConf:
    name: str = MISSING
    root: str = "data"  # relative paths resolve against the directory advbench is started from
    download: bool = False
    val_size: int = 0
    split_seed: int = 0
    n_train: Optional[int] = None  # keep only the first n training examples (quick runs)
    augment: Any = False  # true (random_crop, flip), false, or a list of: random_crop, flip,
    # random_resized_crop, color_jitter, rotation (streamed data sets; in-memory ones crop and flip together)
    mean: List[float] = field(default_factory=list)  # images: per channel (the model normalizes)
    std: List[float] = field(default_factory=list)
    # synthetic only
    n_classes: int = 10
    channels: int = 1
    image_size: int = 8
    n_test: int = 200
    noise: float = 0.2
    # text
    max_len: int = 64  # tokens per example: longer texts are cut; each batch is padded to its longest
    tokenizer: Optional[str] = None  # an AutoTokenizer directory; null: the model's own (model=hf), else words
    max_vocab: int = 20000
    min_freq: int = 1
    categories: List[str] = field(default_factory=list)  # fortunes: one class per category file
    fortunes_dir: str = "/usr/share/games/fortunes"
    test_size: float = 0.25  # fortunes, and torchvision sets without a split: share held out for the test split
    # detection: composed scenes (digits_det, fashion_mnist_det) and the user's YOLO / COCO data
    n_scenes: int = 2000  # training scenes composed (the test split has n_test)
    objects: List[int] = field(default_factory=lambda: [1, 4])  # objects per scene, min and max
    scale: List[float] = field(default_factory=lambda: [0.6, 1.4])  # an item's size relative to its source image
    path: Optional[str] = None  # yolo: the data set's YAML (train:, val:, test:, names:); seg_folder: its folder
    ignore_index: int = 255  # seg_folder: the mask value of unlabelled pixels
    train_json: Optional[str] = None  # coco: instances JSONs and their image folders; text_json: JSON lines files
    train_images: Optional[str] = None
    val_json: Optional[str] = None
    val_images: Optional[str] = None
    test_json: Optional[str] = None
    test_images: Optional[str] = None
    # streamed (image_folder, torchvision, custom): read through a DataLoader, never held whole in memory
    train_dir: Optional[str] = None  # image_folder: one sub-folder per class in each split
    val_dir: Optional[str] = None
    test_dir: Optional[str] = None
    resize: Optional[int] = None  # resize (shorter side) and centre-crop every image to this square size
    class_name: Optional[str] = None  # torchvision: a torchvision.datasets class, e.g. CIFAR100, SVHN, STL10
    kwargs: Dict[str, Any] = field(default_factory=dict)  # torchvision: the class's other keyword arguments
    train_split: str = "train"  # torchvision: split= values of classes that take one (ImageNet: test_split=val)
    test_split: str = "test"
    train_set: Optional[Dict[str, Any]] = None  # custom: {_target_: ...} building a map-style (image, label) set
    val_set: Optional[Dict[str, Any]] = None
    test_set: Optional[Dict[str, Any]] = None
    workers: int = 2  # DataLoader worker processes
    train_csv: Optional[str] = None  # text_csv
    test_csv: Optional[str] = None
    text_column: str = "text"
    text_pair_column: Optional[str] = None  # text_csv, text_json: the second sentence of GLUE-style pairs
    label_column: str = "label"


@dataclass
class AttackConf:
    name: str = "none"  # an attack kind (attacks/spec.py KINDS) or none; checked against it
    norm: str = "linf"  # a threat model's norm (attacks/threats.py THREATS); checked against it
    eps: Optional[str] = None  # null: the run's top-level eps
    alpha: Optional[str] = None  # step size in pixels; null: the attack's default rule
    steps: int = 1
    random_start: bool = False
    restarts: int = 1
    targeted: bool = False
    bn_mode: BnMode = BnMode.eval
    loss: Loss = Loss.ce  # apgd: cross-entropy or the DLR loss
    n_targets: int = 9  # apgd targeted: the top-n wrong classes, each in turn
    target: Optional[Target] = None  # what is perturbed; null: the input (images), the embedding output (text)
    terms: Optional[Any] = None  # detection: {term: weight} ascended, e.g. {box: 1, obj: 1}; null: every term, 1
    goal: Goal = Goal.truth  # detection: the targets the objective is taken against (TOG: predictions, empty)
    relabel: Relabel = Relabel.none  # goal=predictions: relabeled to their most (ml) / least (ll) likely other class
    descend: bool = False  # move towards the goal (TOG vanishing, mislabeling) rather than away from it
    normalize_terms: bool = False  # scale each term's input gradient to unit norm before the weighted sum
    eot: int = 1  # apgd: gradients averaged over this many forward passes (EOT, for randomized defenses)


@dataclass
class GuardConf:
    """Catastrophic-overfitting guard: PGD on a fixed training batch after every epoch."""
    enabled: bool = False
    n_examples: int = 512
    steps: int = 10
    max_drop: float = 0.2  # fires when PGD accuracy falls this far below its best so far
    action: GuardAction = GuardAction.rollback


@dataclass
class TrainingConf:
    name: str = MISSING  # a training mode (training/modes.py MODES); checked against it
    adv_weight: float = 0.5  # mixed: weight of the adversarial loss; the clean loss gets 1 - adv_weight
    beta: float = 6.0  # trades, mart: weight of the robust (KL) term; smart: lambda_s
    replays: int = 4  # free: m, the times each batch is replayed
    init_mag: float = 0.0  # freelb: the initial perturbation's magnitude (0: start at the clean embeddings)
    guard: GuardConf = field(default_factory=GuardConf)


class Job(Enum):
    train = "train"
    eval = "eval"
    saliency = "saliency"


class SaliencyMethod(Enum):
    gradient = "gradient"  # input gradients: |dL/dx|, SmoothGrad, each loss term's
    gradcam = "gradcam"  # the input-gradient maps and, beside them, Grad-CAM of each loss term at saliency.layer


@dataclass
class SaliencyConf:
    n_examples: int = 8  # test images, one PNG each
    smoothgrad: bool = True
    smoothgrad_samples: int = 16
    smoothgrad_sigma: float = 0.15
    method: SaliencyMethod = SaliencyMethod.gradient
    layer: Optional[str] = None  # gradcam: a module name (model.named_modules()); null: the model's default


@dataclass
class SanityConf:
    sample: int = 200  # test examples for the checks that attack each example again
    zero_grad_frac: float = 0.1  # warn above this fraction of inputs with an all-zero gradient
    max_pgd_gap: float = 0.05  # warn when PGD-20 accuracy exceeds an APGD evaluation's by more


@dataclass
class EvalConf:
    name: Optional[str] = None  # the preset's name and version, recorded in results.json (autoattack, standard)
    version: Optional[str] = None
    n_examples: Optional[int] = None  # the first n test examples; null: all
    batch_size: Any = "auto"  # a number, or auto: on CUDA the largest that fits (probed once), on the CPU 32-500
    # Any, not AttackConf: OmegaConf cannot add a typed entry from the command line ('+eval.attacks.fgsm={name:
    # fgsm}'). The presets type their entries with the attack_schema default; checks.py validates added ones.
    attacks: Dict[str, Any] = field(default_factory=dict)
    cascade: bool = True
    eps_list: Optional[List[str]] = None
    save_examples: int = 0
    sanity: SanityConf = field(default_factory=SanityConf)
    det_score: float = 0.25  # detection: predictions scoring at least this count as detections (recall)
    det_recall: float = 0.5  # detection: an image counts as broken when its recall falls below this
    seg_threshold: float = 0.75  # segmentation: an image counts as broken when its pixel accuracy falls below this
    # tasks that evaluate with the run's own attack (text): also that attack as PGD with this many steps at the
    # same eps and norm; null: the task's default (text: 10), 0: the one-step attack alone
    own_attack_steps: Optional[int] = None


@dataclass
class ValConf:
    n_examples: Optional[int] = None  # null: the whole validation split
    attack: AttackConf = field(default_factory=lambda: AttackConf(name="pgd", steps=10,
                                                                   random_start=True))


@dataclass
class LoggerConf:
    trackers: List[str] = field(default_factory=list)  # csv, tensorboard, mlflow, wandb
    experiment: str = "advbench"  # mlflow experiment, wandb project
    mlflow_uri: str = "mlruns"  # a folder (relative to where advbench starts) or a tracking URI
    wandb_mode: str = "offline"  # offline | online


@dataclass
class Config:
    dataset: DatasetConf = MISSING
    model: Dict[str, Any] = MISSING  # _target_ + keyword arguments
    attack: AttackConf = MISSING
    training: TrainingConf = MISSING
    optimizer: Dict[str, Any] = MISSING  # _target_ + _partial_: true + keyword arguments
    eps: str = "0.1"  # pixel units: a number or a fraction such as 8/255
    seed: int = 0
    epochs: int = 5
    batch_size: int = 128
    lr: float = 3e-3
    schedule: Schedule = Schedule.onecycle
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None  # max global gradient norm; null: no clipping
    eps_warmup_epochs: float = 0.0  # ramp eps linearly from 0 over this many epochs
    device: Device = Device.auto
    amp: Amp = Amp.off
    # torch.compile the attacks' and the training step's forwards (runtime/compiled.py): auto (or null) on CUDA
    # only, as on the CPU compiled steps measured slower; true (any device) or false. Checked in checks.py.
    compile: Any = "auto"
    progress: bool = True
    threads: Optional[int] = None  # torch CPU threads; null: torch's default
    val: ValConf = field(default_factory=ValConf)
    eval: EvalConf = MISSING
    logger: LoggerConf = field(default_factory=LoggerConf)
    job: Job = Job.train  # what a run does; the problem (task) is the data set's
    checkpoint: Optional[str] = None
    saliency: SaliencyConf = field(default_factory=SaliencyConf)
    resume: Optional[str] = None  # a run directory, or auto: each job's own directory (sweeps)
    stop_after_epoch: Optional[int] = None  # end after this epoch as if interrupted (resumable)


def register_configs() -> None:
    """Register the schema that conf/config.yaml extends, and the resolvers that name run directories."""
    ConfigStore.instance().store(name="advbench_schema", node=Config)
    ConfigStore.instance().store(name="attack_schema", node=AttackConf)
    if not OmegaConf.has_resolver("run_dir"):
        # Cached: Hydra resolves a directory more than once (and in each sweep job, from a copy of the cache),
        # and a claimed directory must come back the same each time.
        for name in ("run_dir", "sweep_dir", "sweep_subdir"):
            OmegaConf.register_new_resolver(name, getattr(rundir, name), use_cache=True)


_INT64 = 2 ** 63  # what torch takes as a seed or a size


def is_number(value, kind) -> bool:
    """An int (not a bool) within int64 for int fields; a finite int or float for float fields."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind is int:
        return isinstance(value, int) and -_INT64 <= value < _INT64
    return math.isfinite(value)
