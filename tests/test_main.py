"""End to end through main.py on a small real subset: train, test, resume, and the errors."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, workdir, check=True, timeout=300):
    """Run main.py in `workdir` (where ./logs and ./checkpoints land)."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args],
                            cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"main.py {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def summary_tags(folder):
    """Every summary tag written to the event files of a TensorBoard folder."""
    [events] = glob.glob(str(folder / "events.out.*"))
    return {value.tag for event in tf.compat.v1.train.summary_iterator(events)
            for value in event.summary.value}


def small_run_flags(data_dir, *extra):
    return ["--method=lntl", f"--data_dir={data_dir}", "--max_train_samples=2000",
            "--max_test_samples=1000", "--batch_size=100", "--summary_every=5", *extra]


def epoch_lines(output):
    return [line for line in output.splitlines() if line.startswith("epoch ")]


def test_train_test_and_resume(colored_data_dir, tmp_path):
    flags = small_run_flags(colored_data_dir)
    first = run_main("--phase=train", "--max_epoch=1", *flags, workdir=tmp_path)
    [line] = epoch_lines(first.stdout)
    assert line.startswith("epoch   1/1")
    train_test_acc = float(line.split("test_acc ")[1].split()[0])

    run_dir = tmp_path / "checkpoints" / "lntl_var0.020"
    assert (run_dir / "model.ckpt-20.index").exists()  # 2000 / 100 steps
    assert (run_dir / "best" / "best.json").exists()
    train_tags = summary_tags(tmp_path / "logs" / "lntl_var0.020" / "train")
    assert {"train/label_loss", "train/mi_loss", "train/bias_loss"} <= train_tags
    test_tags = summary_tags(tmp_path / "logs" / "lntl_var0.020" / "test")
    assert {"test/accuracy", "test/colour_bin_accuracy", "epoch/learning_rate",
            "test/input_true-colour-bins_predicted-colour-bins/image/0"} <= test_tags

    tested = run_main("--phase=test", *flags, workdir=tmp_path)
    assert "unbiased test  accuracy" in tested.stdout
    results = json.loads((run_dir / "test_results.json").read_text())
    assert results["test"]["accuracy"] == pytest.approx(train_test_acc, abs=5e-5)
    assert results["test"]["num_samples"] == 1000
    assert {"test_biased", "test_gray"} <= set(results)
    assert (run_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    second = run_main("--phase=train", "--max_epoch=2", *flags, workdir=tmp_path)
    assert "Resumed from" in second.stdout and "at epoch 2, step 20" in second.stdout
    [line] = epoch_lines(second.stdout)
    assert line.startswith("epoch   2/2")
    assert (run_dir / "model.ckpt-40.index").exists()


def test_test_phase_without_checkpoint_names_the_folder(colored_data_dir, tmp_path):
    result = run_main("--phase=test", *small_run_flags(colored_data_dir), workdir=tmp_path,
                      check=False)
    assert result.returncode == 1
    assert "no checkpoint in" in result.stderr
    assert os.path.join("checkpoints", "lntl_var0.020") in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()  # testing creates no run folders


def test_bad_flag_is_refused_before_any_work(tmp_path):
    result = run_main("--phase=train", "--batch_size=0", workdir=tmp_path, check=False)
    assert result.returncode == 1
    assert "--batch_size must be positive" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_sigterm_saves_and_the_same_command_resumes(colored_data_dir, tmp_path):
    flags = ["--phase=train", "--max_epoch=50", *small_run_flags(colored_data_dir)]
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "main.py"), *flags],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    run_dir = tmp_path / "checkpoints" / "lntl_var0.020"
    deadline = time.time() + 240
    while not glob.glob(str(run_dir / "model.ckpt-*.index")) and time.time() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Stopped by SIGTERM: saved" in stdout
    saved_step = int(stdout.split("model.ckpt-")[-1].split(".")[0])
    assert saved_step >= 20  # the signal came after the first epoch's checkpoint

    # 20 steps an epoch: resume into the epoch that the signal cut short.
    resumed = run_main(*[f for f in flags if not f.startswith("--max_epoch")],
                       f"--max_epoch={saved_step // 20 + 1}", workdir=tmp_path)
    assert f"Resumed from ./checkpoints/lntl_var0.020/model.ckpt-{saved_step} " in resumed.stdout
    assert f"step {saved_step}" in resumed.stdout
