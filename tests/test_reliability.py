"""Bad flags, bad checkpoints, divergence, interruption and concurrent runs never lose work."""

import glob
import os
import signal

import numpy as np
import pytest
from absl import flags

import data_loader
import main
import model
import utils


@pytest.fixture(scope="module")
def tiny_splits(colored_data_dir):
    return data_loader.load_splits(0.020, data_dir=colored_data_dir, max_train=400,
                                   max_test=200)


def tiny_config(tmp_path, **overrides):
    settings = dict(method="lntl", batch_size=50, max_epoch=1, eval_batch_size=200,
                    checkpoint_dir=str(tmp_path / "ckpt"), log_dir=str(tmp_path / "logs"),
                    precision="float32", threads=1, summary_every=4)
    settings.update(overrides)
    return model.Config(**settings)


def train(config, splits):
    trainer = model.LNTLModel(config)
    try:
        return trainer.train(splits)
    finally:
        trainer.close()


def folder_bytes(folder):
    """{file name: bytes} of every file in a folder tree, to prove nothing changed."""
    contents = {}
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path) and not path.endswith(".lock"):
            with open(path, "rb") as file:
                contents[os.path.relpath(path, folder)] = file.read()
    return contents


@pytest.mark.parametrize("bad_flag, message", [
    ("--phase=evaluate", "--phase=evaluate: value should be one of <train|test>"),
    ("--method=adversarial", r"value should be one of <baseline\|lntl\|gray\|blindeye>"),
    ("--color_var=0", "--color_var must be positive"),
    ("--color_var=2", r"must be a multiple of 0.001 in \(0, 1\]"),
    ("--color_var=0.0204", "the data file name keeps three decimals"),
    ("--lr=inf", "--lr must be positive"),
    ("--momentum=nan", "--momentum must be a finite number >= 0"),
    ("--seed=-1", "--seed must be a finite number >= 0"),
    ("--threads=100000", "--threads must be 0"),
    ("--exp_name=../elsewhere", "must be a plain folder name"),
    ("--lr=-0.1", "--lr must be positive"),
    ("--batch_size=0", "--batch_size must be positive"),
    ("--max_epoch=0", "--max_epoch must be positive"),
    ("--max_train_samples=0", "--max_train_samples must be positive"),
    ("--grl_scale=-1", "--grl_scale must be a finite number >= 0"),
])
def test_bad_flags_are_refused_at_parse_time(bad_flag, message):
    try:
        with pytest.raises(flags.IllegalFlagValueError, match=message):
            main.FLAGS(["main.py", bad_flag])
    finally:
        main.FLAGS.unparse_flags()


def test_batch_larger_than_the_data_is_refused(colored_data_dir, tmp_path):
    config = tiny_config(tmp_path, data_dir=colored_data_dir, max_train_samples=100,
                         batch_size=128)
    with pytest.raises(main.FlagError, match="--batch_size=128 is larger than the 100"):
        main.load_data(config)


def test_checkpoint_of_another_method_is_refused_by_name(tmp_path, tiny_splits):
    baseline = tiny_config(tmp_path, method="baseline")
    assert train(baseline, tiny_splits) == 0
    lntl = model.LNTLModel(tiny_config(tmp_path, method="lntl"))
    with pytest.raises(model.CheckpointError, match="written by --method=baseline") as error:
        lntl.test(tiny_splits, checkpoint=baseline.run_checkpoint_dir)
    assert baseline.run_checkpoint_dir in str(error.value)


def test_a_smaller_graph_refuses_a_checkpoint_with_more_variables(tmp_path, tiny_splits):
    lntl = tiny_config(tmp_path, method="lntl")
    train(lntl, tiny_splits)
    baseline = model.LNTLModel(tiny_config(tmp_path, method="baseline"))
    with pytest.raises(model.CheckpointError, match="that this graph lacks: it was written "
                                                    "by --method=lntl"):
        baseline.test(tiny_splits, checkpoint=lntl.run_checkpoint_dir)
    assert not os.path.exists(os.path.join(lntl.run_checkpoint_dir, "test_results.json"))


@pytest.mark.parametrize("index_content", [b"", b"garbage that is not a checkpoint state"])
def test_damaged_checkpoint_index_resumes_from_the_newest_files(tmp_path, tiny_splits,
                                                                 index_content):
    config = tiny_config(tmp_path, method="baseline", max_epoch=2)
    train(config, tiny_splits)
    with open(os.path.join(config.run_checkpoint_dir, "checkpoint"), "wb") as index:
        index.write(index_content)
    trainer = model.LNTLModel(config)
    assert trainer.restore_or_initialize().endswith("model.ckpt-16")
    assert trainer.sess.run(trainer.global_step) == 16


@pytest.mark.parametrize("damaged_file", ["index", "data-00000-of-00001"])
def test_damaged_checkpoint_is_refused_by_name(tmp_path, tiny_splits, damaged_file):
    config = tiny_config(tmp_path, method="baseline")
    train(config, tiny_splits)
    prefix = os.path.join(config.run_checkpoint_dir, "model.ckpt-8")
    path = f"{prefix}.{damaged_file}"
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)
    with pytest.raises(model.CheckpointError, match="model.ckpt-8"):
        model.LNTLModel(config).test(tiny_splits)


def test_resume_with_another_batch_size_is_refused(tmp_path, tiny_splits):
    train(tiny_config(tmp_path, max_epoch=1), tiny_splits)  # 8 steps of 50
    with pytest.raises(model.CheckpointError, match="does not fit 2 steps per epoch"):
        train(tiny_config(tmp_path, max_epoch=2, batch_size=200), tiny_splits)


def test_init_checkpoint_starts_f_and_g_from_a_trained_baseline(tmp_path, tiny_splits):
    baseline = tiny_config(tmp_path, method="baseline")
    train(baseline, tiny_splits)
    trained = model.LNTLModel(baseline)
    trained.restore_or_initialize()
    lntl = model.LNTLModel(tiny_config(tmp_path, init_checkpoint=baseline.run_checkpoint_dir))
    lntl.restore_or_initialize()
    for variable in lntl.warm_start_variables:  # weights and batch-norm statistics of f, g
        [same] = [v for v in trained.graph.get_collection("variables")
                  if v.op.name == variable.op.name]
        np.testing.assert_array_equal(lntl.sess.run(variable), trained.sess.run(same),
                                      err_msg=variable.op.name)
    assert lntl.sess.run(lntl.global_step) == 0  # a new run, not a resumed one
    assert {v.op.name.split("/")[0] for v in lntl.warm_start_variables} == {"f", "g"}


def test_damaged_init_checkpoint_is_refused_by_name(tmp_path, tiny_splits):
    baseline = tiny_config(tmp_path, method="baseline")
    train(baseline, tiny_splits)
    data_file = os.path.join(baseline.run_checkpoint_dir, "model.ckpt-8.data-00000-of-00001")
    with open(data_file, "r+b") as file:
        file.truncate(100)
    lntl = tiny_config(tmp_path, init_checkpoint=baseline.run_checkpoint_dir)
    with pytest.raises(model.CheckpointError, match="cannot restore checkpoint .*model.ckpt-8"):
        train(lntl, tiny_splits)


def test_a_finished_run_says_there_is_nothing_to_do(tmp_path, tiny_splits, capsys):
    config = tiny_config(tmp_path)
    train(config, tiny_splits)
    capsys.readouterr()
    assert train(config, tiny_splits) == 0
    output = capsys.readouterr().out
    assert "Already trained 1 of --max_epoch=1 epochs: nothing to do" in output
    assert "Resumed from" not in output


def test_partial_save_leaves_the_previous_checkpoint_in_use(tmp_path, tiny_splits):
    """A run killed while saving step 99 has written files but not the 'checkpoint'
    index, which TensorFlow replaces atomically last: resuming takes the last good one."""
    config = tiny_config(tmp_path)
    train(config, tiny_splits)
    for suffix in ("index", "data-00000-of-00001"):
        with open(os.path.join(config.run_checkpoint_dir, f"model.ckpt-99.{suffix}"), "wb") as f:
            f.write(b"half a checkpoint")
    trainer = model.LNTLModel(config)
    assert trainer.restore_or_initialize().endswith("model.ckpt-8")
    assert trainer.sess.run(trainer.global_step) == 8


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_splits,
                                                                 monkeypatch):
    whole = tiny_config(tmp_path / "whole", max_epoch=2)
    assert train(whole, tiny_splits) == 0

    interrupted = tiny_config(tmp_path / "interrupted", max_epoch=2)
    original_step = model.LNTLModel.train_step
    calls = []

    def step_then_interrupt(self, batch):
        calls.append(1)
        if len(calls) == 11:  # the third step of the second epoch
            os.kill(os.getpid(), signal.SIGINT)
        return original_step(self, batch)

    monkeypatch.setattr(model.LNTLModel, "train_step", step_then_interrupt)
    assert train(interrupted, tiny_splits) == 128 + signal.SIGINT
    monkeypatch.setattr(model.LNTLModel, "train_step", original_step)
    assert os.path.exists(os.path.join(interrupted.run_checkpoint_dir, "model.ckpt-11.index"))
    assert train(interrupted, tiny_splits) == 0

    finals = []
    for config in (whole, interrupted):
        trainer = model.LNTLModel(config)
        trainer.restore_or_initialize()
        finals.append(trainer.sess.run({v.op.name: v for v in
                                        trainer.graph.get_collection("variables")}))
        trainer.close()
    assert finals[0]["global_step"] == finals[1]["global_step"] == 16
    assert finals[0]["epoch"] == finals[1]["epoch"] == 2
    for name, value in finals[0].items():
        np.testing.assert_allclose(finals[1][name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_divergence_stops_naming_step_and_loss_and_keeps_the_last_checkpoint(
        tmp_path, tiny_splits):
    config = tiny_config(tmp_path)
    train(config, tiny_splits)
    saved = folder_bytes(config.run_checkpoint_dir)

    exploding = tiny_config(tmp_path, max_epoch=2, lr=1e30)
    with pytest.raises(model.TrainingDiverged, match=r"loss is (nan|inf) at step \d+"):
        train(exploding, tiny_splits)
    assert folder_bytes(config.run_checkpoint_dir) == saved


def test_a_second_signal_stops_at_once_but_never_inside_a_save():
    with utils.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.exit_code == 128 + signal.SIGINT
        with stop.saving():
            os.kill(os.getpid(), signal.SIGTERM)  # ignored: the save must finish
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal_name == "SIGINT"


def test_written_files_are_readable_like_any_new_file(tmp_path):
    path = tmp_path / "result.json"
    utils.write_json_atomic(str(path), {"accuracy": 0.5})
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["result.json"]  # no temporary file left behind


def test_weights_that_go_nan_under_a_finite_loss_are_never_saved(tmp_path, tiny_splits):
    config = tiny_config(tmp_path, grl_scale=1e30)
    with pytest.raises(model.TrainingDiverged, match="NaN or infinite"):
        train(config, tiny_splits)
    assert not glob.glob(os.path.join(config.run_checkpoint_dir, "model.ckpt-*"))


def test_second_run_on_the_same_folder_is_refused(tmp_path, tiny_splits):
    config = tiny_config(tmp_path)
    os.makedirs(config.run_checkpoint_dir)
    with utils.ExperimentLock(config.run_checkpoint_dir):
        with pytest.raises(utils.ExperimentBusy, match="another run is training into"):
            train(config, tiny_splits)
    assert os.listdir(config.run_checkpoint_dir) == [".lock"]
