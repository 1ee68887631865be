"""The seed's Keras U-Net, written out exactly (Keras 3; the backend comes from ``KERAS_BACKEND``).

This is the reference that unetkit's PyTorch port is measured against: ``conv_block``,
``upsampling_block`` and ``unet_model`` are the tutorial's code with ``tf.keras`` replaced by
``keras``; ``compile_seed`` compiles a model as the tutorial does. Importing the module builds
nothing; it needs the ``keras`` extra (``pip install keras tensorflow-cpu``).
"""

from __future__ import annotations

from typing import Any

import keras
from keras.layers import Conv2D, Conv2DTranspose, Dropout, Input, MaxPooling2D, concatenate


def conv_block(
    inputs: Any = None, n_filters: int = 32, dropout_prob: float = 0, max_pooling: bool = True
) -> tuple[Any, Any]:
    """Two 3x3 convs + ReLU (He-normal), optional dropout and 2x2 max pooling -> (next_layer, skip)."""
    conv = Conv2D(n_filters, 3, activation="relu", padding="same", kernel_initializer=keras.initializers.HeNormal())(
        inputs
    )
    conv = Conv2D(n_filters, 3, activation="relu", padding="same", kernel_initializer=keras.initializers.HeNormal())(
        conv
    )
    if dropout_prob > 0:
        conv = Dropout(dropout_prob)(conv)
    if max_pooling:
        next_layer = MaxPooling2D(pool_size=2)(conv)
    else:
        next_layer = conv
    skip_connection = conv
    return next_layer, skip_connection


def upsampling_block(expansive_input: Any, contractive_input: Any, n_filters: int = 32) -> Any:
    """3x3 stride-2 transposed conv ('same'), concatenation [up, skip], two 3x3 convs + ReLU (He-normal)."""
    up = Conv2DTranspose(n_filters, 3, strides=2, padding="same")(expansive_input)
    merge = concatenate([up, contractive_input], axis=3)
    conv = Conv2D(n_filters, 3, activation="relu", padding="same", kernel_initializer=keras.initializers.HeNormal())(
        merge
    )
    conv = Conv2D(n_filters, 3, activation="relu", padding="same", kernel_initializer=keras.initializers.HeNormal())(
        conv
    )
    return conv


def unet_model(
    input_size: tuple[int, int, int] = (96, 128, 3), n_filters: int = 32, n_classes: int = 23
) -> keras.Model:
    """The seed's U-Net: (N, H, W, C) -> (N, H, W, n_classes) logits."""
    inputs = Input(input_size)
    cblock1 = conv_block(inputs, n_filters)
    cblock2 = conv_block(cblock1[0], n_filters * 2)
    cblock3 = conv_block(cblock2[0], n_filters * 4)
    cblock4 = conv_block(cblock3[0], n_filters * 8, dropout_prob=0.3)
    cblock5 = conv_block(cblock4[0], n_filters * 16, dropout_prob=0.3, max_pooling=False)
    ublock6 = upsampling_block(cblock5[0], cblock4[1], n_filters * 8)
    ublock7 = upsampling_block(ublock6, cblock3[1], n_filters * 4)
    ublock8 = upsampling_block(ublock7, cblock2[1], n_filters * 2)
    ublock9 = upsampling_block(ublock8, cblock1[1], n_filters)
    conv9 = Conv2D(n_filters, 3, activation="relu", padding="same", kernel_initializer="he_normal")(ublock9)
    conv10 = Conv2D(n_classes, 1, padding="same")(conv9)
    model = keras.Model(inputs=inputs, outputs=conv10)
    return model


def compile_seed(model: keras.Model) -> keras.Model:
    """Compile as the seed does: Adam, sparse categorical cross-entropy on logits, accuracy."""
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model
