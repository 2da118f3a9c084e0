"""Small layer helpers for the LNTL graph, in TF1 style.

Each helper owns its variable scope and creates its variables with
`tf.compat.v1.get_variable`, so the networks in model.py read as a list of layers
and each train op can name exactly the variables it may change. Convolution and
dense kernels are added to the WEIGHTS collection: weight decay applies to them
and to nothing else.
"""

import math

import tensorflow as tf

tf1 = tf.compat.v1

WEIGHTS = "lntl_weights"


def conv2d(x, out_channels, kernel_size, stride=1, name="conv"):
    """Same-padded convolution with bias.

    Weights start from a normal with standard deviation sqrt(2 / (k * k * out)),
    the initialisation of the official network.
    """
    in_channels = x.shape[-1]
    stddev = math.sqrt(2.0 / (kernel_size * kernel_size * out_channels))
    with tf1.variable_scope(name):
        kernel = tf1.get_variable(
            "kernel", [kernel_size, kernel_size, in_channels, out_channels],
            initializer=tf1.random_normal_initializer(stddev=stddev))
        bias = tf1.get_variable("bias", [out_channels], initializer=tf1.zeros_initializer())
        _add_weight(kernel)
        y = tf.nn.conv2d(x, kernel, strides=stride, padding="SAME")
        return tf.nn.bias_add(y, bias)


def dense(x, out_units, name="dense"):
    """Fully connected layer, initialised uniformly in +-1/sqrt(fan_in) as PyTorch does."""
    in_units = x.shape[-1]
    limit = 1.0 / math.sqrt(in_units)
    with tf1.variable_scope(name):
        uniform = tf1.random_uniform_initializer(-limit, limit)
        kernel = tf1.get_variable("kernel", [in_units, out_units], initializer=uniform)
        bias = tf1.get_variable("bias", [out_units], initializer=uniform)
        _add_weight(kernel)
        return tf.matmul(x, kernel) + bias


def batch_norm(x, training, decay=0.9, epsilon=1e-5, name="bn"):
    """Batch normalisation of an NHWC tensor over all axes but the channels.

    With `training` the batch's own moments normalise and the moving averages are
    updated by ops placed in the UPDATE_OPS collection (under the current name
    scope, so each forward pass can wire its own updates to its own train op).
    Without it, the moving averages normalise and nothing changes. decay=0.9 is
    PyTorch's momentum 0.1.
    """
    channels = x.shape[-1]
    with tf1.variable_scope(name):
        scale = tf1.get_variable("scale", [channels], initializer=tf1.ones_initializer())
        offset = tf1.get_variable("offset", [channels], initializer=tf1.zeros_initializer())
        moving_mean = tf1.get_variable(
            "moving_mean", [channels], initializer=tf1.zeros_initializer(), trainable=False)
        moving_var = tf1.get_variable(
            "moving_variance", [channels], initializer=tf1.ones_initializer(), trainable=False)
        if not training:
            y, _, _ = tf1.nn.fused_batch_norm(x, scale, offset, moving_mean, moving_var,
                                              epsilon=epsilon, is_training=False)
            return y

        y, mean, variance = _batch_norm_training(x, scale, offset, epsilon)
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, tf1.assign_sub(
            moving_mean, (1.0 - decay) * (moving_mean - mean)))
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, tf1.assign_sub(
            moving_var, (1.0 - decay) * (moving_var - variance)))
        return y


def _batch_norm_training(x, scale, offset, epsilon):
    """Normalise by the batch's moments; return them with the variance unbiased, as
    PyTorch keeps it, so that test-time normalisation matches the training data.

    oneDNN's fused kernel is the faster from about 8 channels up; on the
    3-channel input its gradient is slower than the element-wise ops.
    """
    if x.shape[-1] >= 8:
        return tf1.nn.fused_batch_norm(x, scale, offset, epsilon=epsilon, is_training=True)
    mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
    unbiased_variance = variance * count / tf.maximum(count - 1.0, 1.0)
    y = tf.nn.batch_normalization(x, mean, variance, offset, scale, epsilon)
    return y, mean, unbiased_variance


def relu(x):
    return tf.nn.relu(x)


def max_pool(x, size, stride, padding="SAME"):
    return tf.nn.max_pool2d(x, size, stride, padding)


def global_avg_pool(x):
    """Average over the spatial axes: (N, H, W, C) -> (N, C)."""
    return tf.reduce_mean(x, axis=[1, 2])


def gradient_reversal(x, scale):
    """Identity on the way forward; the gradient is multiplied by -scale on the way back."""

    @tf.custom_gradient
    def reverse(features):
        def grad(upstream):
            return -scale * upstream

        return tf.identity(features), grad

    return reverse(x)


def negative_entropy(logits):
    """Mean of sum_k p_k log p_k over every leading position of `logits`.

    This is the mutual-information surrogate of LNTL: minimising it makes the
    predicted distribution uniform. Computed from log-softmax for stability.
    """
    log_probs = tf.nn.log_softmax(logits)
    return tf.reduce_mean(tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1))


def uniform_cross_entropy(logits):
    """Mean cross-entropy between the uniform distribution and softmax(logits) (BlindEye)."""
    return -tf.reduce_mean(tf.nn.log_softmax(logits))


def masked_cross_entropy(logits, labels, ignore_label=-1):
    """Softmax cross-entropy averaged over the positions whose label is not ignored.

    `labels` holds class indices with `ignore_label` where a position has no
    target (a background pixel of the bias map). Logits at ignored positions
    have no effect on the value or the gradient; with nothing to score the
    loss is 0.
    """
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    per_position = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=safe_labels, logits=logits)
    weights = tf.cast(valid, per_position.dtype)
    return tf.reduce_sum(per_position * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def _add_weight(kernel):
    # A network built twice (train and test passes) reuses its kernels: add each once.
    if all(kernel.name != known.name for known in tf1.get_collection(WEIGHTS)):
        tf1.add_to_collection(WEIGHTS, kernel)
