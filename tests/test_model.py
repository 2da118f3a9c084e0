"""The LNTL graph: which variables each train op changes, and that training learns."""

import numpy as np
import pytest

import data_loader
import model


def coloured_batch(size=32, seed=0):
    """Random blobs painted with their label's palette colour, and their bias labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size)
    intensity = (rng.random((size, 28, 28)) > 0.6) * rng.integers(100, 256, (size, 28, 28))
    colours = data_loader.sample_colors(labels, 0.02, rng)
    images = data_loader.paint(intensity.astype(np.uint8), colours)
    return images, labels.astype(np.int32), data_loader.compute_bias_labels(images)


def build(method, tmp_path, **overrides):
    """An initialised trainer, in float32 so that gradients compare exactly."""
    settings = dict(method=method, checkpoint_dir=str(tmp_path / "ckpt"),
                    log_dir=str(tmp_path / "logs"), precision="float32")
    settings.update(overrides)
    config = model.Config(**settings)
    trainer = model.LNTLModel(config)
    trainer.restore_or_initialize()
    return trainer


def snapshot(trainer):
    """Every network variable's value by name (optimizer slots and counters left out)."""
    variables = [v for scope in ("f", "g") + tuple(model.bias_scopes())
                 for v in model.network_variables(scope, trainer.graph)]
    values = trainer.sess.run(variables)
    # Copies: a fetched value can share memory with the variable that an update rewrites.
    return {v.op.name: np.array(value, copy=True) for v, value in zip(variables, values)}


def changed_networks(before, after):
    """{network scope: [changed variable names]} between two snapshots."""
    changed = {}
    for name, value in before.items():
        if not np.array_equal(value, after[name]):
            changed.setdefault(name.split("/")[0], []).append(name)
    return changed


def run_alone(trainer, step_index, batch):
    trainer.sess.run(trainer.train_steps[step_index], trainer.feed(batch))


@pytest.fixture(scope="module")
def batch():
    return coloured_batch()


def test_lntl_label_step_changes_f_and_g_and_no_variable_of_h(tmp_path, batch):
    trainer = build("lntl", tmp_path)
    before = snapshot(trainer)
    run_alone(trainer, 0, batch)
    changed = changed_networks(before, snapshot(trainer))
    assert set(changed) == {"f", "g"}
    # Every variable of f and g moved: weights, biases, batch-norm scale and statistics.
    assert len(changed["f"]) == len(model.network_variables("f", trainer.graph))
    assert len(changed["g"]) == len(model.network_variables("g", trainer.graph))


def test_lntl_bias_step_changes_h_and_f_but_not_g(tmp_path, batch):
    trainer = build("lntl", tmp_path)
    before = snapshot(trainer)
    run_alone(trainer, 1, batch)
    changed = changed_networks(before, snapshot(trainer))
    assert set(changed) == {"f", "h_r", "h_g", "h_b"}
    for scope in model.bias_scopes():
        assert len(changed[scope]) == len(model.network_variables(scope, trainer.graph))


def test_bias_step_gradient_reaches_f_reversed_and_scaled(tmp_path, batch):
    """f's update from the bias step flips sign with grl_scale and is linear in it."""
    deltas = {}
    for scale in (0.1, -0.2):
        trainer = build("lntl", tmp_path / str(scale), grl_scale=scale, weight_decay=0.0)
        [kernel] = [v for v in model.network_variables("f", trainer.graph)
                    if v.op.name == "f/conv2/kernel"]
        before = trainer.sess.run(kernel)
        run_alone(trainer, 1, batch)
        deltas[scale] = trainer.sess.run(kernel) - before
        trainer.close()
    # Updates of ~1e-5 on weights of ~0.1: float32 rounding of the weights is ~1e-8.
    assert np.abs(deltas[0.1]).max() > 1e-6
    np.testing.assert_allclose(deltas[-0.2], -2.0 * deltas[0.1], rtol=1e-3, atol=1e-7)


def test_single_pass_updates_f_g_and_h_in_one_step(tmp_path, batch):
    trainer = build("lntl", tmp_path, single_pass=True)
    assert len(trainer.train_steps) == 1
    before = snapshot(trainer)
    trainer.train_step(batch)
    assert set(changed_networks(before, snapshot(trainer))) == {"f", "g", "h_r", "h_g", "h_b"}


def test_single_pass_reverses_the_bias_gradient_into_f(tmp_path, batch):
    """With label and MI terms off, f's single-pass update is -grl_scale x the one that
    minimising the bias loss would make: the reversal, written out."""
    deltas = {}
    for name, scale in (("reversed", 0.5), ("plain", -1.0)):
        trainer = build("lntl", tmp_path / name, single_pass=True, grl_scale=scale,
                        loss_lambda=0.0, weight_decay=0.0)
        [kernel] = [v for v in model.network_variables("f", trainer.graph)
                    if v.op.name == "f/conv2/kernel"]
        before = trainer.sess.run(kernel)
        trainer.sess.run(trainer.train_steps[0], trainer.feed(batch))
        deltas[name] = trainer.sess.run(kernel) - before
        trainer.close()
    assert np.abs(deltas["plain"]).max() > 1e-6
    # The label loss still moves f: compare what the bias term adds on top of it.
    label_only = build("lntl", tmp_path / "label", single_pass=True, grl_scale=0.0,
                       loss_lambda=0.0, weight_decay=0.0)
    [kernel] = [v for v in model.network_variables("f", label_only.graph)
                if v.op.name == "f/conv2/kernel"]
    before = label_only.sess.run(kernel)
    label_only.sess.run(label_only.train_steps[0], label_only.feed(batch))
    label_delta = label_only.sess.run(kernel) - before
    np.testing.assert_allclose(deltas["reversed"] - label_delta,
                               -0.5 * (deltas["plain"] - label_delta), rtol=1e-3, atol=1e-7)


def test_baseline_never_touches_h(tmp_path, batch):
    trainer = build("baseline", tmp_path)
    assert len(trainer.train_steps) == 1
    before = snapshot(trainer)
    trainer.train_step(batch)
    assert set(changed_networks(before, snapshot(trainer))) == {"f", "g"}


def test_blindeye_bias_step_trains_h_alone(tmp_path, batch):
    trainer = build("blindeye", tmp_path)
    before = snapshot(trainer)
    run_alone(trainer, 1, batch)
    assert set(changed_networks(before, snapshot(trainer))) == {"h_r", "h_g", "h_b"}
    before = snapshot(trainer)
    run_alone(trainer, 0, batch)
    assert set(changed_networks(before, snapshot(trainer))) == {"f", "g"}


def test_batch_norm_statistics_move_in_training_not_at_test(tmp_path, batch):
    trainer = build("lntl", tmp_path)
    split = data_loader.Split(*batch)
    before = snapshot(trainer)
    trainer.predict(split)
    assert changed_networks(before, snapshot(trainer)) == {}
    trainer.train_step(batch)
    after = snapshot(trainer)
    assert not np.array_equal(before["f/input_bn/moving_mean"], after["f/input_bn/moving_mean"])
    assert not np.array_equal(before["h_r/bn/moving_variance"], after["h_r/bn/moving_variance"])


@pytest.mark.parametrize("method, single_pass", [("lntl", False), ("lntl", True),
                                                 ("blindeye", False)])
def test_iterations_on_one_batch_lower_label_and_bias_loss(tmp_path, batch, method,
                                                           single_pass):
    trainer = build(method, tmp_path, lr=0.01, single_pass=single_pass)
    first, _ = trainer.train_step(batch)
    for _ in range(14):
        last, _ = trainer.train_step(batch)
    assert last["label_loss"] < 0.9 * first["label_loss"]
    assert last["bias_loss"] < 0.9 * first["bias_loss"]


def test_learning_rate_decays_every_lr_decay_epochs(tmp_path):
    trainer = build("baseline", tmp_path, lr=0.01, lr_decay_epochs=2, lr_decay_rate=0.1)
    rates = []
    for _ in range(5):
        rates.append(trainer.sess.run(trainer.learning_rate))
        trainer.sess.run(trainer.next_epoch)
    np.testing.assert_allclose(rates, [0.01, 0.01, 0.001, 0.001, 0.0001], rtol=1e-5)


def test_method_default_learning_rates():
    assert model.Config(method="baseline").lr == 0.01
    assert model.Config(method="lntl").lr == 0.001
    assert model.Config(method="lntl", color_var=0.025).exp_name == "lntl_var0.025"
