"""Speed of this implementation on this machine, one figure a line.

    python scripts/bench.py           # everything, with a whole-process epoch per method
    python scripts/bench.py --quick   # under a minute: fewer repetitions, no whole-process runs

Each throughput is the median of several timed repetitions after a warm-up, fed by
the same batch iterator the trainer uses. Floating-point work is counted from the
layer shapes (convolutions and the dense layer; batch norm, ReLU, pooling and the
losses are left out), so efficiency = achieved GFLOP/s / matmul GFLOP/s is a
lower bound. The matmul reference is float32, measured in the same process.
"""

import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

import main  # noqa: E402,F401  (quiet TensorFlow import, graph mode, and the shared flags)
import data_loader  # noqa: E402
import model  # noqa: E402
import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1

flags.DEFINE_boolean("quick", False, "Fewer repetitions and no whole-process epochs.")
flags.DEFINE_list("bench_batch_sizes", ["128", "200"], "Training batch sizes to time.")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (spatial positions of the output, multiply-adds per position per output channel,
#  output channels, whether its input is the data, which needs no gradient)
F_LAYERS = [(28 * 28, 5 * 5 * 3, 32, True), (14 * 14, 3 * 3 * 32, 32, False)]
G_LAYERS = [(7 * 7, 3 * 3 * 32, 64, False), (7 * 7, 3 * 3 * 64, 64, False), (1, 64, 10, False)]
H_LAYERS = 3 * [(14 * 14, 3 * 3 * 32, 32, False), (14 * 14, 3 * 3 * 32, 8, False)]


def forward_macs(layers):
    return sum(positions * fan_in * out for positions, fan_in, out, _ in layers)


def backward_macs(layers, weights=True):
    """Gradients of the inputs (not for the data) and, if `weights`, of the kernels."""
    inputs = sum(positions * fan_in * out for positions, fan_in, out, is_first in layers
                 if not is_first)
    return inputs + (forward_macs(layers) if weights else 0)


def flops_per_image(method):
    """Floating-point operations per image of one training iteration (both updates)."""
    label_step = forward_macs(F_LAYERS + G_LAYERS) + backward_macs(F_LAYERS + G_LAYERS)
    if method == "baseline":
        return 2 * label_step
    # Update 1 also runs h forward and back to the features, without h's kernel gradients.
    label_step += forward_macs(H_LAYERS) + backward_macs(H_LAYERS, weights=False)
    bias_step = forward_macs(F_LAYERS + H_LAYERS) + backward_macs(F_LAYERS + H_LAYERS)
    return 2 * (label_step + bias_step)


def median_rate(run_once, items, repeats, warmup=1):
    """Median over `repeats` timings of items per second, after `warmup` untimed runs."""
    for _ in range(warmup):
        run_once()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def matmul_gflops(dtype, size=2048, repeats=7):
    graph = tf.Graph()
    with graph.as_default():
        a = tf1.get_variable("a", [size, size], initializer=tf1.random_normal_initializer())
        b = tf1.get_variable("b", [size, size], initializer=tf1.random_normal_initializer())
        product = tf.reduce_sum(tf.matmul(tf.cast(a, dtype), tf.cast(b, dtype)))
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            rate = median_rate(lambda: sess.run(product), 1, repeats, warmup=3)
    return 2 * size ** 3 * rate / 1e9


def report(name, value, unit, note=""):
    print(f"{name:<44s} {value:>10.1f} {unit:<10s} {note}", flush=True)


def bench_pipeline(train_split, batch_size, repeats):
    def one_epoch():
        for batch in data_loader.iterate_batches(train_split, batch_size, shuffle=True,
                                                 drop_remainder=True):
            {"images": batch[0], "labels": batch[1], "bias": batch[2]}  # the feed dict
    return median_rate(one_epoch, len(train_split) // batch_size * batch_size, repeats)


def bench_training(method, batch_size, splits, steps, repeats, precision, single_pass=False):
    config = model.Config(method=method, batch_size=batch_size, precision=precision,
                          checkpoint_dir="/nonexistent", single_pass=single_pass)
    trainer = model.LNTLModel(config)
    trainer.restore_or_initialize()  # no checkpoint folder: fresh weights
    batches = data_loader.iterate_batches(splits["train"], batch_size, shuffle=True,
                                          drop_remainder=True)

    def run_steps():
        for _ in range(steps):
            trainer.train_step(next(batches))

    train_rate = median_rate(run_steps, steps * batch_size, repeats)
    eval_rate = median_rate(lambda: trainer.predict(splits["test"]), len(splits["test"]),
                            max(repeats // 2, 1))
    trainer.close()
    return train_rate, eval_rate


def whole_process_epoch(method, precision):
    """Wall seconds and peak resident MB of `main.py --phase=train --max_epoch=1`."""
    log_root = f"/tmp/lntl-bench-{os.getpid()}"
    command = [sys.executable, os.path.join(REPO, "main.py"), "--phase=train",
               f"--method={method}", "--max_epoch=1", f"--precision={precision}",
               f"--log_dir={log_root}/logs", f"--checkpoint_dir={log_root}/checkpoints",
               f"--data_dir={FLAGS.data_dir}"]
    if FLAGS.mnist_dir:
        command.append(f"--mnist_dir={FLAGS.mnist_dir}")
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_kb = 0
    while process.poll() is None:
        peak_kb = max(peak_kb, _high_water_kb(process.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    subprocess.run(["rm", "-rf", log_root])
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed")
    return seconds, peak_kb / 1024


def _high_water_kb(pid):
    """Peak resident memory of a running process since its exec (Linux VmHWM).

    rusage would count the parent's pages that the child held between fork and exec.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main_bench(argv):
    del argv
    repeats = 3 if FLAGS.quick else 7
    steps = 10 if FLAGS.quick else 30
    precision = model.Config(precision=FLAGS.precision).precision
    print(f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}, "
          f"GPU: {bool(tf.config.list_physical_devices('GPU'))}, precision {precision}")

    reference = matmul_gflops(tf.float32)
    report("matmul float32 2048x2048", reference, "GFLOP/s", "(the reference)")
    report("matmul bfloat16 2048x2048", matmul_gflops(tf.bfloat16), "GFLOP/s")

    splits = data_loader.load_splits(FLAGS.color_var, data_dir=FLAGS.data_dir,
                                     mnist_dir=FLAGS.mnist_dir)
    for batch_size in map(int, FLAGS.bench_batch_sizes):
        report(f"data pipeline, batch {batch_size}",
               bench_pipeline(splits["train"], batch_size, repeats), "images/s",
               "(shuffled uint8 batches with bias labels; normalised in the graph)")

    for method in ("baseline", "lntl"):
        report(f"{method} work per image", flops_per_image(method) / 1e6, "MFLOP")
        for batch_size in map(int, FLAGS.bench_batch_sizes):
            train_rate, eval_rate = bench_training(method, batch_size, splits, steps,
                                                   repeats, precision)
            achieved = train_rate * flops_per_image(method) / 1e9
            report(f"{method} training, batch {batch_size}", train_rate, "images/s",
                   f"{achieved:.0f} GFLOP/s = {100 * achieved / reference:.0f} % of matmul; "
                   f"epoch of 60,000 in {60000 / train_rate:.1f} s")
        report(f"evaluation ({method} graph, f+g+h)", eval_rate, "images/s")

    single_pass_rate, _ = bench_training("lntl", 128, splits, steps, repeats, precision,
                                         single_pass=True)
    report("lntl --single_pass training, batch 128", single_pass_rate, "images/s",
           f"epoch of 60,000 in {60000 / single_pass_rate:.1f} s (fewer FLOPs than counted "
           "above: one forward pass)")

    if not FLAGS.quick:
        for method in ("baseline", "lntl"):
            seconds, peak_mb = whole_process_epoch(method, precision)
            report(f"{method}: main.py, 1 full epoch, whole process", seconds, "s",
                   f"peak resident memory {peak_mb:.0f} MB")
    print(f"bench process peak resident memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    app.run(main_bench)
