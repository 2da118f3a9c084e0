"""The Learning-Not-to-Learn graph and the sessions that train and test it.

One static TF1 graph holds the feature extractor f, the label classifier g and
the three colour (bias) predictors h_r, h_g, h_b of Kim et al., CVPR 2019. Every
method of the paper's table is built by the same code:

    baseline  f and g minimise the label cross-entropy.
    gray      the same, trained and tested on grey digits (the data differ).
    lntl      per iteration, on one batch: (1) f and g minimise the label loss
              plus lambda x the negative entropy of h's prediction, h fixed;
              (2) a fresh pass of f, through a gradient reversal, into h: the
              bias loss trains h to read the colour and, reversed, f to hide it.
    blindeye  (1) f and g minimise the label loss plus lambda x the cross-entropy
              of h's prediction to the uniform distribution; (2) h learns the
              colour from detached features.

`LNTLModel` builds the graph and runs the train and test loops.
"""

import dataclasses
import json
import math
import os
import re
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig
from tqdm import tqdm

import data_loader
import ops
import utils

tf1 = tf.compat.v1

METHODS = ("baseline", "lntl", "gray", "blindeye")
CHANNELS = ("r", "g", "b")
NUM_CLASSES = data_loader.NUM_CLASSES
NUM_BINS = data_loader.NUM_BIAS_BINS
DEFAULT_LR = {"baseline": 0.01, "gray": 0.01, "lntl": 0.001, "blindeye": 0.001}


@dataclasses.dataclass
class Config:
    """Everything a run needs; main.py fills it from the command line."""

    method: str = "lntl"
    color_var: float = 0.020
    data_dir: str = "./data"
    mnist_dir: str = None
    log_dir: str = "./logs"
    checkpoint_dir: str = "./checkpoints"
    exp_name: str = ""
    max_epoch: int = 100
    batch_size: int = 128
    eval_batch_size: int = 1000
    lr: float = None
    lr_decay_rate: float = 0.1
    lr_decay_epochs: int = 40
    weight_decay: float = 5e-4
    momentum: float = 0.9
    loss_lambda: float = 0.01
    loss_mu: float = 1.0
    grl_scale: float = 0.1
    single_pass: bool = False
    seed: int = 0
    data_seed: int = 0
    init_checkpoint: str = ""
    max_train_samples: int = None
    max_test_samples: int = None
    summary_every: int = 50
    keep_checkpoints: int = 3
    threads: int = 0
    precision: str = "auto"

    def __post_init__(self):
        if self.precision == "auto":
            self.precision = "bfloat16" if cpu_has_fast_bfloat16() else "float32"
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.method, 0.001)
        if not self.exp_name:
            self.exp_name = f"{self.method}_var{self.color_var:.3f}"

    @property
    def run_checkpoint_dir(self):
        return os.path.join(self.checkpoint_dir, self.exp_name)

    @property
    def run_log_dir(self):
        return os.path.join(self.log_dir, self.exp_name)


def cpu_has_fast_bfloat16():
    """True on CPUs with bfloat16 matrix units (AMX-BF16) and no visible GPU."""
    if tf.config.list_physical_devices("GPU"):
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return "amx_bf16" in cpuinfo.read().split()
    except OSError:
        return False


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or belongs to another kind of run."""


# ----------------------------------------------------------------------------
# The networks


def normalize(images):
    """uint8 images (N, 28, 28, 3) -> float32, per-channel standardised.

    Done in the graph so that the feed carries uint8, a quarter of the bytes.
    """
    scaled = tf.cast(images, tf.float32) / 255.0
    return (scaled - data_loader.MEAN) / data_loader.STD


def feature_extractor(images, training):
    """f: the 14x14x32 feature map that both g and h see."""
    with tf1.variable_scope("f", reuse=tf1.AUTO_REUSE, use_resource=True):
        x = ops.batch_norm(images, training, name="input_bn")
        x = ops.relu(ops.conv2d(x, 32, 5, name="conv1"))
        x = ops.max_pool(x, 3, 2)
        return ops.relu(ops.conv2d(x, 32, 3, name="conv2"))


def label_classifier(feature_map):
    """g: digit logits (N, 10) from f's feature map."""
    with tf1.variable_scope("g", reuse=tf1.AUTO_REUSE, use_resource=True):
        x = ops.relu(ops.conv2d(feature_map, 64, 3, stride=2, name="conv1"))
        x = ops.relu(ops.conv2d(x, 64, 3, name="conv2"))
        return ops.dense(ops.global_avg_pool(x), NUM_CLASSES, name="fc")


def bias_predictor(feature_map, channel, training):
    """h_<channel>: per-position logits (N, 14, 14, 8) over the channel's 8 colour bins."""
    with tf1.variable_scope("h_" + channel, reuse=tf1.AUTO_REUSE, use_resource=True):
        x = ops.conv2d(feature_map, 32, 3, name="conv1")
        x = ops.relu(ops.batch_norm(x, training, name="bn"))
        return ops.conv2d(x, NUM_BINS, 3, name="conv2")


def bias_predictors(feature_map, training):
    return [bias_predictor(feature_map, channel, training) for channel in CHANNELS]


def network_variables(scope, graph=None):
    """All variables of one network (trainable and moving averages)."""
    graph = graph or tf1.get_default_graph()
    return graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES, scope=scope + "/")


def trainable_variables(*scopes):
    return [v for scope in scopes
            for v in tf1.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES, scope=scope + "/")]


def bias_scopes():
    return ["h_" + channel for channel in CHANNELS]


# ----------------------------------------------------------------------------
# The graph


class LNTLModel:
    """Builds the graph for one method and runs its train and test sessions."""

    def __init__(self, config):
        self.config = config
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf1.set_random_seed(config.seed)
            self._build_inputs()
            self._build_schedule()
            self._build_train_ops()
            self._build_eval()
            self._build_summaries()
            self.saver = tf1.train.Saver(max_to_keep=config.keep_checkpoints)
            self.best_saver = tf1.train.Saver(max_to_keep=1)
            self.weights_finite = {v.op.name: tf.reduce_all(tf.math.is_finite(v))
                                   for v in tf1.trainable_variables()}
            self.warm_start_variables = network_variables("f") + network_variables("g")
            self.warm_start_saver = tf1.train.Saver(self.warm_start_variables)
            self.init_op = tf1.global_variables_initializer()
        self.graph.finalize()
        self.sess = None

    def _build_inputs(self):
        self.images = tf1.placeholder(tf.uint8, [None, 28, 28, 3], name="images")
        self.labels = tf1.placeholder(tf.int32, [None], name="labels")
        self.bias_labels = tf1.placeholder(tf.int8, [None, 14, 14, 3], name="bias_labels")
        self.inputs = normalize(self.images)
        # One target map per channel, (N, 14, 14) each, with IGNORE_LABEL on background.
        self.bias_targets = tf.unstack(tf.cast(self.bias_labels, tf.int32), axis=-1)

    def _build_schedule(self):
        """Epoch and step live in the graph so that a checkpoint carries them."""
        cfg = self.config
        self.global_step = tf1.train.get_or_create_global_step()
        self.epoch = tf1.get_variable(
            "epoch", [], tf.int64, tf1.zeros_initializer(), trainable=False, use_resource=True)
        self.next_epoch = tf1.assign_add(self.epoch, 1)
        decays = tf.cast(self.epoch // cfg.lr_decay_epochs, tf.float32)
        self.learning_rate = cfg.lr * tf.pow(cfg.lr_decay_rate, decays)
        # One optimizer, so f shares its momentum between the two updates of LNTL.
        self.optimizer = tf1.train.MomentumOptimizer(self.learning_rate, cfg.momentum)

    def _minimize(self, loss, scopes, pass_scope, global_step=None):
        """Momentum SGD on the variables of `scopes`, with weight decay on their kernels.

        The batch-norm statistics that change with this step are those of the same
        networks in the forward pass built under `pass_scope`: a step changes
        nothing outside the networks it trains.
        """
        variables = trainable_variables(*scopes)
        names = {v.name for v in variables}
        kernels = [v for v in tf1.get_collection(ops.WEIGHTS) if v.name in names]
        decay = self.config.weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in kernels])
        gradients = tf.gradients(loss + decay, variables)
        bn_updates = [update for scope in scopes for update in tf1.get_collection(
            tf1.GraphKeys.UPDATE_OPS, pass_scope + scope + "/")]
        with tf.control_dependencies(bn_updates):
            return self.optimizer.apply_gradients(zip(gradients, variables), global_step)

    def _build_train_ops(self):
        """`self.train_steps`: the updates of one iteration, run in order on one batch.

        Each step's losses are in the matching dict of `self.step_losses`.
        """
        method = self.config.method
        with tf.name_scope("label_pass") as pass_scope:
            feature_map = feature_extractor(self.inputs, training=True)
            logits = label_classifier(feature_map)
            label_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=self.labels, logits=logits))
            self.train_correct = tf.reduce_sum(tf.cast(
                tf.equal(tf.argmax(logits, -1, output_type=tf.int32), self.labels), tf.int32))
            if method in ("baseline", "gray"):
                label_step = self._minimize(label_loss, ["f", "g"], pass_scope,
                                            self.global_step)
                self.train_steps = [label_step]
                self.step_losses = [{"label_loss": label_loss}]
                return
            bias_logits = bias_predictors(feature_map, training=True)

        if method == "lntl":
            self._build_lntl(label_loss, bias_logits, pass_scope)
        else:
            self._build_blindeye(label_loss, bias_logits, pass_scope)

    def _bias_loss(self, bias_logits):
        """Sum over r, g, b of the masked cross-entropy against the colour bins."""
        return tf.add_n([ops.masked_cross_entropy(logits, targets, data_loader.IGNORE_LABEL)
                         for logits, targets in zip(bias_logits, self.bias_targets)])

    def _build_lntl(self, label_loss, bias_logits, label_pass_scope):
        cfg = self.config
        # Mean over r, g, b of the negative entropy of h's prediction.
        mi_loss = tf.add_n([ops.negative_entropy(logits) for logits in bias_logits])
        mi_loss /= len(bias_logits)
        if cfg.single_pass:
            self._build_lntl_single_pass(label_loss, mi_loss, bias_logits, label_pass_scope)
            return
        label_step = self._minimize(label_loss + cfg.loss_lambda * mi_loss, ["f", "g"],
                                    label_pass_scope)

        # A fresh forward pass: it runs after label_step and sees the f it wrote.
        with tf.name_scope("bias_pass") as pass_scope:
            feature_map = feature_extractor(self.inputs, training=True)
            reversed_map = ops.gradient_reversal(feature_map, cfg.grl_scale)
            bias_loss = self._bias_loss(bias_predictors(reversed_map, training=True))
            bias_step = self._minimize(cfg.loss_mu * bias_loss, ["f"] + bias_scopes(),
                                       pass_scope, self.global_step)
        self.train_steps = [label_step, bias_step]
        self.step_losses = [{"label_loss": label_loss, "mi_loss": mi_loss},
                            {"bias_loss": bias_loss}]

    def _build_lntl_single_pass(self, label_loss, mi_loss, bias_logits, pass_scope):
        """Both LNTL updates from one forward pass, applied together (--single_pass).

        The reversal written out: f and g descend label + lambda x MI - grl_scale x
        mu x bias, h descends mu x bias, all at the same point. The two-pass
        iteration instead lets the second update see the f that the first wrote.
        """
        cfg = self.config
        bias_loss = self._bias_loss(bias_logits)
        reversed_bias = cfg.grl_scale * cfg.loss_mu * bias_loss
        with tf.name_scope(pass_scope):
            feature_step = self._minimize(label_loss + cfg.loss_lambda * mi_loss - reversed_bias,
                                          ["f", "g"], pass_scope)
            bias_step = self._minimize(cfg.loss_mu * bias_loss, bias_scopes(), pass_scope,
                                       self.global_step)
        self.train_steps = [tf.group(feature_step, bias_step)]
        self.step_losses = [{"label_loss": label_loss, "mi_loss": mi_loss,
                             "bias_loss": bias_loss}]

    def _build_blindeye(self, label_loss, bias_logits, label_pass_scope):
        cfg = self.config
        confusion = tf.add_n([ops.uniform_cross_entropy(logits) for logits in bias_logits])
        confusion /= len(bias_logits)
        label_step = self._minimize(label_loss + cfg.loss_lambda * confusion, ["f", "g"],
                                    label_pass_scope)

        with tf.name_scope("bias_pass") as pass_scope:
            feature_map = tf.stop_gradient(feature_extractor(self.inputs, training=True))
            bias_loss = self._bias_loss(bias_predictors(feature_map, training=True))
            bias_step = self._minimize(cfg.loss_mu * bias_loss, bias_scopes(), pass_scope,
                                       self.global_step)
        self.train_steps = [label_step, bias_step]
        self.step_losses = [{"label_loss": label_loss, "confusion_loss": confusion},
                            {"bias_loss": bias_loss}]

    @property
    def trains_bias_heads(self):
        """The colour heads of baseline and gray are never trained: no figures for them."""
        return self.config.method in ("lntl", "blindeye")

    @property
    def loss_names(self):
        return [name for losses in self.step_losses for name in losses]

    def _build_eval(self):
        """Inference with moving batch-norm statistics: digit and colour-bin predictions."""
        with tf.name_scope("eval"):
            feature_map = feature_extractor(self.inputs, training=False)
            self.predictions = tf.argmax(label_classifier(feature_map), -1, output_type=tf.int32)
            bias_logits = bias_predictors(feature_map, training=False)
            self.bias_predictions = tf.stack(
                [tf.argmax(logits, -1, output_type=tf.int32) for logits in bias_logits], axis=-1)

    def _build_summaries(self):
        """Pictures for TensorBoard; the scalars are written from Python values."""
        inputs = tf.cast(self.images, tf.float32) / 255.0
        self.input_summary = tf1.summary.image("test/inputs", inputs, max_outputs=8)
        colour_maps = tf.concat([inputs, _bin_map_to_image(tf.cast(self.bias_labels, tf.int32)),
                                 _bin_map_to_image(self.bias_predictions)], axis=2)
        self.colour_map_summary = tf1.summary.image(
            "test/input_true-colour-bins_predicted-colour-bins", colour_maps, max_outputs=8)
        self.confusion_png = tf1.placeholder(tf.string, [], name="confusion_png")
        confusion_image = tf.expand_dims(tf.image.decode_png(self.confusion_png, channels=3), 0)
        self.confusion_summary = tf1.summary.image("test/confusion_matrix", confusion_image)

    # ------------------------------------------------------------------------
    # Sessions

    def _session(self):
        if self.sess is None:
            threads = self.config.threads
            session_config = tf1.ConfigProto(
                intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
            if self.config.precision == "bfloat16":
                # oneDNN runs convolutions and matmuls in bfloat16; the variables,
                # losses and updates stay float32.
                rewrites = session_config.graph_options.rewrite_options
                rewrites.auto_mixed_precision_onednn_bfloat16 = RewriterConfig.ON
            self.sess = tf1.Session(graph=self.graph, config=session_config)
        return self.sess

    def close(self):
        if self.sess is not None:
            self.sess.close()
            self.sess = None

    def feed(self, batch):
        images, labels, bias_labels = batch
        return {self.images: images, self.labels: labels, self.bias_labels: bias_labels}

    def restore_or_initialize(self):
        """Resume from the latest checkpoint of this run, else start afresh.

        Returns the checkpoint path restored, or None.
        """
        sess = self._session()
        path = latest_checkpoint_in(self.config.run_checkpoint_dir)
        if path is not None:
            self.restore(path)
            return path
        sess.run(self.init_op)
        if self.config.init_checkpoint:
            self._warm_start(self.config.init_checkpoint)
        return None

    def restore(self, path):
        _check_checkpoint_matches(path, self.graph, exact=True)
        _restore(self.saver, self._session(), path)

    def _warm_start(self, init_checkpoint):
        """Load f and g (weights and batch-norm statistics) from a trained checkpoint."""
        path = resolve_checkpoint(init_checkpoint, "--init_checkpoint")
        _check_checkpoint_matches(path, self.graph, self.warm_start_variables)
        _restore(self.warm_start_saver, self.sess, path)
        print(f"Started f and g from {path}")

    def train_step(self, batch):
        """One iteration: every update of the method, in order, on the same batch.

        Returns the losses by name and the number of correct label predictions.
        """
        feed = self.feed(batch)
        losses = {}
        _, correct, first_losses = self.sess.run(
            [self.train_steps[0], self.train_correct, self.step_losses[0]], feed)
        losses.update(first_losses)
        for step, step_losses in zip(self.train_steps[1:], self.step_losses[1:]):
            losses.update(self.sess.run([step, step_losses], feed)[1])
        return losses, correct

    def predict(self, split):
        """Digit and colour-bin predictions for a whole split, in order."""
        digits, colour_bins = [], []
        for batch in data_loader.iterate_batches(split, self.config.eval_batch_size):
            d, c = self.sess.run([self.predictions, self.bias_predictions], self.feed(batch))
            digits.append(d)
            colour_bins.append(c)
        return np.concatenate(digits), np.concatenate(colour_bins)

    def evaluate(self, split):
        """Accuracy, per-class accuracy, confusion matrix and colour-bin accuracy of a split."""
        digits, colour_bins = self.predict(split)
        confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
        np.add.at(confusion, (split.labels, digits), 1)
        per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
        result = {
            "accuracy": float(confusion.trace() / max(confusion.sum(), 1)),
            "per_class_accuracy": [float(a) for a in per_class],
            "confusion_matrix": confusion.tolist(),
            "num_samples": int(len(split)),
        }
        if self.trains_bias_heads:  # share of foreground colour bins h still reads
            scored = split.bias_labels != data_loader.IGNORE_LABEL
            hits = (colour_bins == split.bias_labels) & scored
            result["colour_bin_accuracy"] = float(hits.sum() / max(scored.sum(), 1))
        return result

    # ------------------------------------------------------------------------
    # Training

    def train(self, splits):
        """Train to max_epoch, resuming where a previous run of this experiment stopped."""
        cfg = self.config
        train_split, test_split = splits["train"], splits["test"]
        steps_per_epoch = data_loader.num_batches(len(train_split), cfg.batch_size, True)
        os.makedirs(cfg.run_checkpoint_dir, exist_ok=True)
        with utils.ExperimentLock(cfg.run_checkpoint_dir), utils.StopSignals() as stop:
            resumed = self.restore_or_initialize()
            self._record_config(resumed)
            epoch, step = self.sess.run([self.epoch, self.global_step])
            if resumed and epoch < cfg.max_epoch:
                _check_resume_fits(resumed, epoch, step, steps_per_epoch)
                print(f"Resumed from {resumed} at epoch {epoch + 1}, step {step}")
            print(f"Training {cfg.method} on variance {cfg.color_var:.3f}: "
                  f"{len(train_split)} images, {steps_per_epoch} steps per epoch, "
                  f"{cfg.precision}; logs in {cfg.run_log_dir}, checkpoints in "
                  f"{cfg.run_checkpoint_dir}", flush=True)
            writers = {name: self._summary_writer(name) for name in ("train", "test")}
            if not resumed:
                writers["train"].add_graph(self.graph)
            if epoch >= cfg.max_epoch:
                print(f"Already trained {epoch} of --max_epoch={cfg.max_epoch} epochs: "
                      "nothing to do. Raise --max_epoch to train further.")
            try:
                while epoch < cfg.max_epoch and not stop.requested:
                    skip = step - epoch * steps_per_epoch
                    learning_rate = self.sess.run(self.learning_rate)
                    stats = self._train_epoch(train_split, epoch, skip, steps_per_epoch,
                                              writers["train"], stop)
                    if stop.requested:
                        break
                    epoch, step = self.sess.run([self.next_epoch, self.global_step])
                    accuracy = self._end_epoch(epoch, step, learning_rate, stats, test_split,
                                               writers["test"])
                    with stop.saving():
                        self.save()
                        self._save_if_best(accuracy, epoch)
            finally:
                for writer in writers.values():
                    writer.close()
            if stop.requested:
                with stop.saving():
                    path = self.save()
                print(f"\nStopped by {stop.signal_name}: saved {path}. "
                      "Run the same command again to resume.")
                return stop.exit_code
        return 0

    def _record_config(self, resumed):
        """config.json keeps the settings the run started with; a resume that changes
        them says which, and leaves the record as it was."""
        path = os.path.join(self.config.run_checkpoint_dir, "config.json")
        settings = dataclasses.asdict(self.config)
        if not (resumed and os.path.exists(path)):
            utils.write_json_atomic(path, settings)
            return
        started = _read_json(path)
        if not started:
            print(f"{path} is unreadable; left as it is")
            return
        changes = [f"{name} {started.get(name)} -> {value}" for name, value in settings.items()
                   if started.get(name) != value and name != "max_epoch"]  # raised to extend
        if changes:
            print(f"Resuming with settings that differ from {path}: {', '.join(changes)}")

    def _train_epoch(self, train_split, epoch, skip, steps_per_epoch, writer, stop):
        cfg = self.config
        batches = data_loader.iterate_batches(
            train_split, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
            drop_remainder=True, skip_batches=skip)
        totals = {name: 0.0 for name in self.loss_names}
        seen, correct, start = 0, 0, time.time()
        # The context closes the bar on any exit, so an error line starts on its own line.
        with tqdm(batches, total=steps_per_epoch, initial=skip, leave=False,
                  desc=f"epoch {epoch + 1}/{cfg.max_epoch}", dynamic_ncols=True) as progress:
            for batch in progress:
                step = epoch * steps_per_epoch + skip + seen // cfg.batch_size
                losses, batch_correct = self.train_step(batch)
                _check_finite(losses, step + 1)
                if step % cfg.summary_every == 0:
                    writer.add_summary(utils.scalar_summary(
                        {"train/" + name: value for name, value in losses.items()}), step)
                for name, value in losses.items():
                    totals[name] += value
                seen += len(batch[1])
                correct += batch_correct
                progress.set_postfix(loss=f"{losses['label_loss']:.3f}", refresh=False)
                if stop.requested:
                    break
        steps = max(seen // cfg.batch_size, 1)
        stats = {name: total / steps for name, total in totals.items()}
        stats["steps"], stats["resumed_mid_epoch"] = steps, skip > 0
        stats["train_accuracy"] = correct / max(seen, 1)
        stats["seconds"] = time.time() - start
        return stats

    def _end_epoch(self, epoch, step, learning_rate, stats, test_split, writer):
        """Evaluate, log one line and write TensorBoard; returns the test accuracy."""
        result = self.evaluate(test_split)
        values = {"test/accuracy": result["accuracy"],
                  "epoch/train_accuracy": stats["train_accuracy"],
                  "epoch/seconds": stats["seconds"],
                  "epoch/learning_rate": learning_rate}
        values.update({"epoch/" + name: stats[name] for name in self.loss_names})
        picture = self.colour_map_summary if self.trains_bias_heads else self.input_summary
        if self.trains_bias_heads:
            values["test/colour_bin_accuracy"] = result["colour_bin_accuracy"]
        sample = next(data_loader.iterate_batches(test_split, 8))
        # Global step on every x-axis, so that training and test curves line up.
        writer.add_summary(self.sess.run(picture, self.feed(sample)), step)
        writer.add_summary(utils.scalar_summary(values), step)
        writer.flush()

        losses = "  ".join(f"{name} {stats[name]:.4f}" for name in self.loss_names)
        colour = (f"colour_acc {result['colour_bin_accuracy']:.4f}  "
                  if self.trains_bias_heads else "")
        partial = (f"  (the last {stats['steps']} steps, after resuming)"
                   if stats["resumed_mid_epoch"] else "")
        print(f"epoch {epoch:3d}/{self.config.max_epoch}  lr {learning_rate:.2g}  {losses}  "
              f"train_acc {stats['train_accuracy']:.4f}  test_acc {result['accuracy']:.4f}  "
              f"{colour}{stats['seconds']:.1f}s{partial}", flush=True)
        return result["accuracy"]

    def _summary_writer(self, name):
        with self.graph.as_default():  # FileWriter refuses to work in eager mode
            return tf1.summary.FileWriter(os.path.join(self.config.run_log_dir, name))

    def save(self):
        """Checkpoint the run, unless a weight is NaN or infinite (then TrainingDiverged)."""
        finite = self.sess.run(self.weights_finite)
        if not all(finite.values()):
            broken = ", ".join(name for name, ok in finite.items() if not ok)
            raise TrainingDiverged(
                f"weights became NaN or infinite ({broken}) by step "
                f"{self.sess.run(self.global_step)}; not saved, so the last checkpoint "
                "is the last good one. Try a lower --lr, --loss_lambda or --grl_scale.")
        path = os.path.join(self.config.run_checkpoint_dir, "model.ckpt")
        return self.saver.save(self.sess, path, global_step=self.global_step)

    def _save_if_best(self, accuracy, epoch):
        """Keep the checkpoint of highest unbiased test accuracy in best/.

        The test set picks it, so its accuracy is optimistic: report the last epoch.
        """
        best_dir = os.path.join(self.config.run_checkpoint_dir, "best")
        record_path = os.path.join(best_dir, "best.json")
        if _read_json(record_path).get("accuracy", -1.0) >= accuracy:
            return
        os.makedirs(best_dir, exist_ok=True)
        self.best_saver.save(self.sess, os.path.join(best_dir, "model.ckpt"),
                             global_step=self.global_step)
        utils.write_json_atomic(record_path, {"accuracy": accuracy, "epoch": int(epoch)})

    # ------------------------------------------------------------------------
    # Testing

    def test(self, splits, checkpoint=""):
        """Score a checkpoint on the unbiased, biased and grey test sets.

        Writes test_results.json and confusion_matrix.png beside the checkpoint and
        the same figures to TensorBoard; returns the results.
        """
        if checkpoint:
            path = resolve_checkpoint(checkpoint)
        else:
            path = resolve_checkpoint(self.config.run_checkpoint_dir,
                                      "--checkpoint_dir and --exp_name; train first")
        self.restore(path)
        epoch, step = self.sess.run([self.epoch, self.global_step])
        results = {"checkpoint": path, "method": self.config.method,
                   "color_var": self.config.color_var, "epoch": int(epoch), "step": int(step)}
        for name in ("test", "test_biased", "test_gray"):
            results[name] = self.evaluate(splits[name])

        out_dir = os.path.dirname(path)
        utils.write_json_atomic(os.path.join(out_dir, "test_results.json"), results)
        png = utils.confusion_matrix_png(np.array(results["test"]["confusion_matrix"]),
                                         title=f"{self.config.exp_name}, unbiased test set")
        utils.write_bytes_atomic(os.path.join(out_dir, "confusion_matrix.png"), png)
        self._write_test_summaries(results, png, step)
        return results

    def _write_test_summaries(self, results, png, step):
        writer = self._summary_writer("test_phase")
        values = {f"{name}/accuracy": results[name]["accuracy"]
                  for name in ("test", "test_biased", "test_gray")}
        writer.add_summary(utils.scalar_summary(values), step)
        writer.add_summary(self.sess.run(self.confusion_summary, {self.confusion_png: png}),
                           step)
        writer.close()


# ----------------------------------------------------------------------------
# Helpers


def _bin_map_to_image(bins):
    """Colour bins (N, 14, 14, 3) -> an RGB picture (N, 28, 28, 3) of each bin's centre.

    Ignored (background) positions are black.
    """
    centres = tf.where(bins >= 0, (tf.cast(bins, tf.float32) * 32.0 + 16.0) / 255.0, 0.0)
    return tf.image.resize(centres, [28, 28], method="nearest")


def _check_resume_fits(path, epoch, step, steps_per_epoch):
    """A checkpoint's step must fall inside its epoch at this run's steps per epoch."""
    if not 0 <= step - epoch * steps_per_epoch < steps_per_epoch:
        raise CheckpointError(
            f"checkpoint {path} is at step {step} in epoch {epoch + 1}, which does not fit "
            f"{steps_per_epoch} steps per epoch: resume with the --batch_size and "
            "--max_train_samples it was trained with (see config.json beside it)")


def _check_finite(losses, step):
    for name, value in losses.items():
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"{name} is {value} at step {step}; stopped without saving, so the last "
                "checkpoint is the last good one. Try a lower --lr.")


def latest_checkpoint_in(folder):
    """The newest checkpoint prefix in a folder, or None.

    TensorFlow's 'checkpoint' index names it. When that index is damaged, or names
    files that are gone (a moved folder), the highest-numbered complete checkpoint
    there is used: a run never starts afresh over checkpoints it could resume.
    """
    try:
        prefix = tf1.train.latest_checkpoint(folder)
    except (ValueError, tf.errors.OpError):  # an empty or damaged index
        prefix = None
    if prefix is not None or not os.path.isdir(folder):
        return prefix
    steps = [int(match.group(1)) for name in os.listdir(folder)
             if (match := re.fullmatch(r"model\.ckpt-(\d+)\.index", name))]
    if not steps:
        return None
    prefix = os.path.join(folder, f"model.ckpt-{max(steps)}")
    print(f"note: the 'checkpoint' index in {folder} is missing or damaged; using the "
          f"newest checkpoint files there, {prefix}")
    return prefix


def resolve_checkpoint(path, flag="--checkpoint"):
    """A checkpoint prefix from a prefix or a folder; CheckpointError if there is none."""
    if os.path.exists(path + ".index"):
        return path
    prefix = latest_checkpoint_in(path)
    if prefix is None:
        raise CheckpointError(
            f"no checkpoint in {os.path.abspath(path)} (from {flag}): expected a folder "
            "holding a 'checkpoint' file, or a prefix such as model.ckpt-468")
    return prefix


def _check_checkpoint_matches(path, graph, variables=None, exact=False):
    """Every variable must be in the checkpoint with the same shape, else CheckpointError.

    With `exact`, the checkpoint must hold nothing else either: one written by
    another method carries variables (h's momentum, say) that this graph lacks.
    """
    try:
        stored = dict(tf1.train.list_variables(path))
    except (tf.errors.OpError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(error)}")
    if variables is None:
        variables = graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)
    other_method = (f"it was written by --method={_trained_method(path)}"
                    if _trained_method(path) else "it was written by another method")
    for variable in variables:
        name = variable.op.name
        if name not in stored:
            raise CheckpointError(f"checkpoint {path} has no variable {name}: {other_method}")
        if list(stored[name]) != variable.shape.as_list():
            raise CheckpointError(
                f"checkpoint {path} stores {name} with shape {stored[name]}, "
                f"expected {variable.shape.as_list()}")
    extra = sorted(set(stored) - {variable.op.name for variable in variables})
    if exact and extra:
        raise CheckpointError(f"checkpoint {path} holds {extra[0]} and {len(extra) - 1} more "
                              f"variables that this graph lacks: {other_method}")


def _trained_method(checkpoint_path):
    """The --method recorded in config.json beside a checkpoint, if any."""
    return _read_json(os.path.join(os.path.dirname(checkpoint_path), "config.json")).get(
        "method")


def _restore(saver, sess, path):
    try:
        saver.restore(sess, path)
    except (tf.errors.OpError, ValueError) as error:
        raise CheckpointError(f"cannot restore checkpoint {path}: {_first_line(error)}")


def _read_json(path):
    """A JSON record as a dict; {} when it is missing or unreadable (it is rewritten)."""
    try:
        with open(path) as record:
            value = json.load(record)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _first_line(error):
    """The informative first line of an error; TensorFlow's start with boilerplate."""
    message = getattr(error, "message", None) or str(error)
    boilerplate = ("Graph execution error", "Detected at node", "File ", "Node:", "[[")
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.strip().startswith(boilerplate)]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
