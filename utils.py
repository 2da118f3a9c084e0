"""Run housekeeping that is not the algorithm: locks, signals, atomic files, figures."""

import contextlib
import errno
import fcntl
import io
import json
import os
import signal

import matplotlib
import tensorflow as tf

import data_loader

matplotlib.use("Agg")  # figures go to files; no display is needed or expected
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

tf1 = tf.compat.v1


class ExperimentBusy(RuntimeError):
    """Another process is training into the same checkpoint folder."""


class ExperimentLock:
    """An exclusive lock on a run's checkpoint folder, held while training.

    flock is released by the kernel when the process dies, so a killed run never
    leaves a stale lock behind.
    """

    def __init__(self, folder):
        self.path = os.path.join(folder, ".lock")
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self.file.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise ExperimentBusy(
                    f"another run is training into {os.path.dirname(self.path)}; wait for it "
                    "to finish, or choose another --exp_name") from None
            raise
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


class StopSignals:
    """Turns SIGINT and SIGTERM into a request to stop after the current step.

    A second signal stops at once, without saving, except while a checkpoint is
    being written (`with stop.saving():`), which is always allowed to finish.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self.exit_code = 0
        self._saving = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and not self._saving:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = self.signal_name or signal.Signals(signum).name
        self.exit_code = self.exit_code or 128 + signum

    @contextlib.contextmanager
    def saving(self):
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def __enter__(self):
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def write_bytes_atomic(path, data):
    """Never a half-written file: see data_loader.atomic_file."""
    with data_loader.atomic_file(path) as out_file:
        out_file.write(data)


def write_json_atomic(path, value):
    write_bytes_atomic(path, (json.dumps(value, indent=2) + "\n").encode())


def scalar_summary(values):
    """A TensorBoard Summary proto from a {tag: number} dict."""
    return tf1.Summary(value=[tf1.Summary.Value(tag=tag, simple_value=float(value))
                              for tag, value in values.items()])


def confusion_matrix_png(confusion, title):
    """PNG bytes of a confusion matrix (rows true digit, columns predicted digit)."""
    rates = confusion / confusion.sum(axis=1, keepdims=True).clip(min=1)
    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for true_digit in range(confusion.shape[0]):
        for predicted in range(confusion.shape[1]):
            colour = "white" if rates[true_digit, predicted] > 0.5 else "black"
            axes.text(predicted, true_digit, f"{rates[true_digit, predicted]:.2f}",
                      ha="center", va="center", fontsize=7, color=colour)
    axes.set(xlabel="predicted digit", ylabel="true digit", title=title,
             xticks=range(confusion.shape[1]), yticks=range(confusion.shape[0]))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
