"""Layer helpers of ops.py against values worked out by hand."""

import math

import numpy as np
import pytest
import tensorflow as tf

import ops

tf1 = tf.compat.v1


def evaluate(build):
    """Build a fresh graph with `build()` and return the values of what it returns."""
    graph = tf.Graph()
    with graph.as_default():
        fetches = build()
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            return sess.run(fetches)


def test_gradient_reversal_is_identity_forward_and_negated_scaled_backward():
    x_value = np.array([[1.5, -2.0, 3.0]], np.float32)
    upstream = np.array([[0.5, 2.0, -4.0]], np.float32)

    def build():
        x = tf.constant(x_value)
        y = ops.gradient_reversal(x, scale=0.1)
        loss = tf.reduce_sum(y * upstream)  # d loss / d y = upstream
        return y, tf.gradients(loss, x)[0]

    forward, gradient = evaluate(build)
    np.testing.assert_array_equal(forward, x_value)
    np.testing.assert_allclose(gradient, -0.1 * upstream, rtol=1e-6)


def test_negative_entropy_matches_hand_computation():
    # Position 1: logits (0, ln 3) -> p = (1/4, 3/4). Position 2: uniform over 2 -> p = (1/2, 1/2).
    logits = np.array([[0.0, math.log(3.0)], [5.0, 5.0]], np.float32)
    first = 0.25 * math.log(0.25) + 0.75 * math.log(0.75)
    second = 2 * 0.5 * math.log(0.5)
    value = evaluate(lambda: ops.negative_entropy(tf.constant(logits)))
    assert value == pytest.approx((first + second) / 2, rel=1e-6)


def test_uniform_cross_entropy_matches_hand_computation():
    # softmax(0, ln 3) = (1/4, 3/4); cross-entropy to (1/2, 1/2) = -(ln 1/4 + ln 3/4) / 2.
    logits = np.array([[0.0, math.log(3.0)]], np.float32)
    expected = -(math.log(0.25) + math.log(0.75)) / 2
    assert evaluate(lambda: ops.uniform_cross_entropy(tf.constant(logits))) == pytest.approx(
        expected, rel=1e-6)


def test_masked_cross_entropy_averages_scored_positions_only():
    logits = np.array([[0.0, math.log(3.0)], [2.0, 0.0], [7.0, -3.0]], np.float32)
    labels = np.array([1, 0, -1])  # the third position is ignored
    expected = (-math.log(0.75) - math.log(1 / (1 + math.exp(-2.0)))) / 2
    value = evaluate(lambda: ops.masked_cross_entropy(tf.constant(logits), tf.constant(labels)))
    assert value == pytest.approx(expected, rel=1e-6)


def test_masked_cross_entropy_ignores_logits_at_ignored_positions():
    labels = np.array([[1, -1], [-1, 0]])
    logits = np.random.default_rng(0).normal(size=(2, 2, 8)).astype(np.float32)
    changed = logits.copy()
    changed[0, 1] = 100.0
    changed[1, 0] = -50.0

    def build():
        variable = tf1.get_variable("logits", initializer=logits)
        loss = ops.masked_cross_entropy(variable, tf.constant(labels))
        return loss, tf.gradients(loss, variable)[0], tf1.assign(variable, changed)

    graph = tf.Graph()
    with graph.as_default():
        loss, gradient, change = build()
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            before, before_gradient = sess.run([loss, gradient])
            sess.run(change)
            after = sess.run(loss)
    assert after == pytest.approx(before, rel=1e-6)
    np.testing.assert_array_equal(before_gradient[0, 1], 0.0)
    np.testing.assert_array_equal(before_gradient[1, 0], 0.0)
    assert np.abs(before_gradient[0, 0]).sum() > 0


def test_masked_cross_entropy_is_zero_with_nothing_to_score():
    logits = np.ones((3, 8), np.float32)
    value = evaluate(lambda: ops.masked_cross_entropy(tf.constant(logits),
                                                      tf.constant([-1, -1, -1])))
    assert value == 0.0


def test_conv2d_shapes_and_initialiser_scale():
    def build():
        x = tf.zeros([2, 14, 14, 32])
        y = ops.conv2d(x, 64, 3, stride=2, name="conv")
        with tf1.variable_scope("conv", reuse=True):
            kernel = tf1.get_variable("kernel")
        return y, kernel

    output, kernel = evaluate(build)
    assert output.shape == (2, 7, 7, 64)
    assert kernel.shape == (3, 3, 32, 64)
    # 18,432 draws from N(0, 2 / (3 * 3 * 64)): the sample std is within 2 % of it.
    assert kernel.std() == pytest.approx(math.sqrt(2 / (3 * 3 * 64)), rel=0.02)


@pytest.mark.parametrize("repeat", [1, 4])  # 2 channels (element-wise path), 8 (fused)
def test_batch_norm_training_normalises_and_moves_statistics_test_mode_does_not(repeat):
    # Two pixels, two channels: means (2, 20), variances (1, 100).
    pair = np.array([[1.0, 10.0], [3.0, 30.0]], np.float32)
    x_value = np.tile(pair, (1, repeat)).reshape(2, 1, 1, 2 * repeat)

    graph = tf.Graph()
    with graph.as_default():
        x = tf.constant(x_value)
        with tf1.variable_scope("net"):
            train_out = ops.batch_norm(x, training=True, name="bn")
        with tf1.variable_scope("net", reuse=True):
            test_out = ops.batch_norm(x, training=False, name="bn")
        updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        moving_mean, moving_var = [v for v in tf1.global_variables() if "moving" in v.name]
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            np.testing.assert_allclose(sess.run(train_out).reshape(2, -1),
                                       np.tile([[-1, -1], [1, 1]], (1, repeat)), atol=1e-4)
            sess.run(test_out)
            np.testing.assert_array_equal(sess.run(moving_mean), 0.0)
            sess.run(updates)
            # decay 0.9: 0.1 x batch mean; the unbiased variance of 2 samples is 2x.
            np.testing.assert_allclose(sess.run(moving_mean), np.tile([0.2, 2.0], repeat),
                                       rtol=1e-6)
            np.testing.assert_allclose(sess.run(moving_var),
                                       np.tile([0.9 + 0.2, 0.9 + 20.0], repeat), rtol=1e-6)
