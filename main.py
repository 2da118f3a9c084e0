r"""Train or test Learning Not to Learn on Colored-MNIST.

    python main.py --phase=train --method=baseline --color_var=0.020
    python main.py --phase=train --method=lntl --color_var=0.020 \
        --init_checkpoint=checkpoints/baseline_var0.020
    python main.py --phase=test --method=lntl --color_var=0.020

Every flag's default is in `python main.py --helpshort`; README.md explains them.
"""

import contextlib
import math
import os
import sys

from absl import app, flags


@contextlib.contextmanager
def quiet_stderr(enabled):
    """Send file descriptor 2 to /dev/null: TensorFlow's C++ start-up lines ignore
    TF_CPP_MIN_LOG_LEVEL, and they would hide the run's own output."""
    if not enabled:
        yield
        return
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Set TF_CPP_MIN_LOG_LEVEL=0 to see TensorFlow's own log lines.
_QUIET_TF = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2") != "0"
try:
    with quiet_stderr(_QUIET_TF):
        import tensorflow as tf
except KeyboardInterrupt:
    print("\ninterrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(130)

tf.compat.v1.disable_eager_execution()  # a TF1 program: one static graph, run in sessions
if _QUIET_TF:
    tf.get_logger().setLevel("ERROR")  # e.g. the Saver's deprecation notes on every save

import data_loader  # noqa: E402
import model  # noqa: E402
import utils  # noqa: E402

# absl.logging defines --log_dir for its own log files, which this program never
# writes; the name belongs to TensorBoard here, as in the original repository.
if "log_dir" in flags.FLAGS:
    delattr(flags.FLAGS, "log_dir")

# One source of truth for defaults: the Config that model.py runs on.
DEFAULTS = {name: field.default for name, field in model.Config.__dataclass_fields__.items()}

flags.DEFINE_enum("phase", "train", ["train", "test"], "train, or test a checkpoint.")
flags.DEFINE_enum("method", DEFAULTS["method"], list(model.METHODS),
                  "baseline: label loss only; lntl: Learning Not to Learn; gray: baseline on "
                  "grey digits; blindeye: Alvi et al. 2018 confusion loss.")
flags.DEFINE_float("color_var", DEFAULTS["color_var"],
                   "Colour variance sigma^2 of Colored-MNIST (0..1 scale).")
flags.DEFINE_string("data_dir", DEFAULTS["data_dir"],
                    "Folder of the Colored-MNIST .npy files (read, or generated and cached).")
flags.DEFINE_string("mnist_dir", DEFAULTS["mnist_dir"],
                    "Folder with the four MNIST IDX files (or mnist.npz). Default: "
                    "$LNTL_MNIST_DIR, else ./data/mnist, else downloaded there.")
flags.DEFINE_string("log_dir", DEFAULTS["log_dir"],
                    "TensorBoard logs go to <log_dir>/<exp_name>/.")
flags.DEFINE_string("checkpoint_dir", DEFAULTS["checkpoint_dir"],
                    "Checkpoints go to <checkpoint_dir>/<exp_name>/.")
flags.DEFINE_string("exp_name", DEFAULTS["exp_name"],
                    "Experiment name. Default: <method>_var<color_var>.")
flags.DEFINE_string("checkpoint", "", "Test phase: checkpoint prefix or folder to test. "
                    "Default: the latest in <checkpoint_dir>/<exp_name>/.")
flags.DEFINE_string("init_checkpoint", DEFAULTS["init_checkpoint"],
                    "Start f and g from this checkpoint (prefix or folder), e.g. a trained "
                    "baseline, as the authors do for unlearning.")
flags.DEFINE_integer("max_epoch", DEFAULTS["max_epoch"], "Number of training epochs.")
flags.DEFINE_integer("batch_size", DEFAULTS["batch_size"], "Training batch size.")
flags.DEFINE_integer("eval_batch_size", DEFAULTS["eval_batch_size"],
                     "Evaluation batch size (speed only).")
flags.DEFINE_float("lr", DEFAULTS["lr"], "Learning rate. Default: 0.01 for baseline and "
                   "gray, 0.001 for lntl and blindeye.")
flags.DEFINE_float("lr_decay_rate", DEFAULTS["lr_decay_rate"],
                   "Learning rate multiplied by this ...")
flags.DEFINE_integer("lr_decay_epochs", DEFAULTS["lr_decay_epochs"],
                     "... every this many epochs.")
flags.DEFINE_float("weight_decay", DEFAULTS["weight_decay"],
                   "L2 weight decay on convolution and dense kernels.")
flags.DEFINE_float("momentum", DEFAULTS["momentum"], "SGD momentum.")
flags.DEFINE_float("loss_lambda", DEFAULTS["loss_lambda"],
                   "Weight of the entropy (mutual-information) loss for lntl, of the "
                   "confusion loss for blindeye.")
flags.DEFINE_float("loss_mu", DEFAULTS["loss_mu"], "Weight of the bias-prediction loss.")
flags.DEFINE_float("grl_scale", DEFAULTS["grl_scale"],
                   "Gradient reversal: f receives -grl_scale x the bias loss gradient.")
flags.DEFINE_boolean("single_pass", DEFAULTS["single_pass"],
                     "lntl only: both updates of an iteration from one forward pass, applied "
                     "together (about a quarter faster); the default is the authors' two "
                     "passes. README compares the two.")
flags.DEFINE_integer("seed", DEFAULTS["seed"], "Seed of weight initialisation and batch order.")
flags.DEFINE_integer("data_seed", DEFAULTS["data_seed"],
                     "Seed of the colours when Colored-MNIST is generated; 0 writes the "
                     "authors' file name, others add _seed<N>.")
flags.DEFINE_integer("max_train_samples", DEFAULTS["max_train_samples"],
                     "Use only the first N training images (quick runs). Default: all.")
flags.DEFINE_integer("max_test_samples", DEFAULTS["max_test_samples"],
                     "Use only the first N test images. Default: all.")
flags.DEFINE_integer("summary_every", DEFAULTS["summary_every"],
                     "Write training scalars every N steps.")
flags.DEFINE_integer("keep_checkpoints", DEFAULTS["keep_checkpoints"],
                     "How many recent checkpoints to keep.")
flags.DEFINE_enum("precision", DEFAULTS["precision"], ["auto", "float32", "bfloat16"],
                  "Arithmetic of convolutions and matmuls. auto: bfloat16 on a CPU with "
                  "AMX-BF16 units (several times faster there), else float32.")
flags.DEFINE_integer("threads", DEFAULTS["threads"],
                     "TensorFlow intra- and inter-op threads; 0 lets TensorFlow choose.")

FLAGS = flags.FLAGS


class FlagError(ValueError):
    """Flags that are valid one by one but not together with the data."""


# Errors the user can act on: one line, no traceback.
USER_ERRORS = (data_loader.DataError, model.CheckpointError, model.TrainingDiverged,
               utils.ExperimentBusy, FlagError, OSError, tf.errors.PermissionDeniedError)


def _validate(name, check, expectation):
    """Refuse --name at parse time unless check(value); None means the default."""
    flags.register_validator(name, lambda value: value is None or check(value),
                             message=f"--{name} {expectation}")


for _name in ("color_var", "max_epoch", "batch_size", "eval_batch_size", "lr",
              "lr_decay_epochs", "max_train_samples", "max_test_samples", "summary_every",
              "keep_checkpoints"):
    _validate(_name, lambda value: 0 < value < math.inf, "must be positive")
for _name in ("lr_decay_rate", "weight_decay", "momentum", "loss_lambda", "loss_mu",
              "grl_scale", "seed", "data_seed"):
    _validate(_name, lambda value: 0 <= value < math.inf, "must be a finite number >= 0")
_validate("threads", lambda value: 0 <= value <= 256, "must be 0 (TensorFlow decides) to 256")
_validate("color_var", lambda value: value <= 1 and round(value, 3) == value,
          "must be a multiple of 0.001 in (0, 1]: the data file name keeps three decimals "
          "(the paper uses 0.020 to 0.050)")
_validate("exp_name", lambda name: name not in (".", "..") and "/" not in name
          and os.sep not in name, "must be a plain folder name (no '/', not '.' or '..')")
def config_from_flags():
    fields = model.Config.__dataclass_fields__
    return model.Config(**{name: FLAGS[name].value for name in fields})


def load_data(config):
    splits = data_loader.load_splits(
        config.color_var, data_dir=config.data_dir, mnist_dir=config.mnist_dir,
        seed=config.data_seed, gray=(config.method == "gray"),
        max_train=config.max_train_samples, max_test=config.max_test_samples)
    if config.batch_size > len(splits["train"]):
        raise FlagError(f"--batch_size={config.batch_size} is larger than the "
                         f"{len(splits['train'])} training images")
    return splits


def print_test_report(results):
    print(f"checkpoint {results['checkpoint']} (epoch {results['epoch']}, "
          f"step {results['step']})")
    names = {"test": "unbiased test", "test_biased": "biased test", "test_gray": "grey test"}
    for key, label in names.items():
        result = results[key]
        per_class = " ".join(f"{a:.2f}" for a in result["per_class_accuracy"])
        print(f"{label:14s} accuracy {result['accuracy']:.4f}  per class [{per_class}]  "
              f"({result['num_samples']} images)")
    print(f"wrote test_results.json and confusion_matrix.png to "
          f"{os.path.dirname(results['checkpoint'])}")


def make_folder(flag, folder):
    """Create an output folder early: a flag that names a file fails here, in one line."""
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FlagError(f"{flag}: cannot make the folder {folder}: a file is in the way") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: every option is a --flag")
    config = config_from_flags()
    try:
        make_folder("--data_dir", config.data_dir)
        splits = load_data(config)
        trainer = model.LNTLModel(config)
        if FLAGS.phase == "train":
            make_folder("--checkpoint_dir", config.run_checkpoint_dir)
            make_folder("--log_dir", config.run_log_dir)
            return trainer.train(splits)
        print_test_report(trainer.test(splits, FLAGS.checkpoint))
        return 0
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nerror: interrupted: stopped without saving; the checkpoints already "
              "written are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    app.run(main)
