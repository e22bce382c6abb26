"""Which model files may run code when loaded, found before they are loaded.

A Keras 2 HDF5 file rebuilds ``Lambda`` layers from marshalled Python bytecode, looks
up custom objects by name and calls TensorFlow functions named in ``TFOpLambda``
layers; a SavedModel's graph can hold any TensorFlow op, file reads and Python calls
included. Such files are refused unless the operator trusts their code
(``covidscan models add --trust-code``, or ``MODEL_TRUST_CODE`` for ``MODEL_PATH``).

HDF5: the ``model_config`` attribute (JSON) is read with h5py and every layer, initializer,
regularizer, constraint and activation in it must be a built-in on the lists below.
SavedModel: every op in ``saved_model.pb`` (graphs and function library) must be on the
op list, and the Keras layer metadata beside it passes the same layer check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ALLOWED_LAYERS = frozenset(
    {
        "Functional",
        "Model",
        "Sequential",
        "InputLayer",
        "Dense",
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv2DTranspose",
        "SeparableConv2D",
        "DepthwiseConv2D",
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "Activation",
        "ReLU",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "Softmax",
        "ThresholdedReLU",
        "Add",
        "Subtract",
        "Multiply",
        "Average",
        "Maximum",
        "Minimum",
        "Concatenate",
        "Dot",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "Cropping2D",
        "UpSampling2D",
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "Flatten",
        "Reshape",
        "Permute",
        "RepeatVector",
        "Dropout",
        "SpatialDropout2D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "Rescaling",
        "Resizing",
        "CenterCrop",
        "Normalization",
    }
)
ALLOWED_OBJECTS = frozenset(
    {
        # initializers
        "Zeros",
        "Ones",
        "Constant",
        "GlorotUniform",
        "GlorotNormal",
        "HeUniform",
        "HeNormal",
        "LecunUniform",
        "LecunNormal",
        "RandomUniform",
        "RandomNormal",
        "TruncatedNormal",
        "VarianceScaling",
        "Orthogonal",
        "Identity",
        # regularizers and constraints
        "L1",
        "L2",
        "L1L2",
        "MaxNorm",
        "MinMaxNorm",
        "NonNeg",
        "UnitNorm",
        # dtype policies; shapes and specs in a SavedModel's Keras metadata
        "Policy",
        "DTypePolicy",
        "__tuple__",
        "InputSpec",
        "TensorShape",
        "TypeSpec",
    }
)
ALLOWED_ACTIVATIONS = frozenset(
    {
        "linear",
        "relu",
        "relu6",
        "sigmoid",
        "hard_sigmoid",
        "softmax",
        "softplus",
        "softsign",
        "tanh",
        "elu",
        "selu",
        "swish",
        "silu",
        "gelu",
        "exponential",
        "leaky_relu",
        "mish",
    }
)
ALLOWED_OPS = frozenset(
    {
        # graph plumbing and variables
        "Const",
        "Identity",
        "IdentityN",
        "NoOp",
        "Placeholder",
        "PlaceholderWithDefault",
        "PartitionedCall",
        "StatefulPartitionedCall",
        "VarHandleOp",
        "ReadVariableOp",
        "AssignVariableOp",
        "DisableCopyOnRead",
        "VarIsInitializedOp",
        "StopGradient",
        # every SavedModel's own checkpoint save/restore functions
        "SaveV2",
        "RestoreV2",
        "MergeV2Checkpoints",
        "ShardedFilename",
        "StringJoin",
        "StaticRegexFullMatch",
        # arithmetic and shapes
        "AddV2",
        "Add",
        "Sub",
        "Mul",
        "RealDiv",
        "Neg",
        "Square",
        "Sqrt",
        "Rsqrt",
        "Exp",
        "Log",
        "Maximum",
        "Minimum",
        "Mean",
        "Sum",
        "Max",
        "Min",
        "Prod",
        "MatMul",
        "BatchMatMulV2",
        "BiasAdd",
        "Cast",
        "Shape",
        "Pack",
        "Unpack",
        "Reshape",
        "Squeeze",
        "ExpandDims",
        "Transpose",
        "ConcatV2",
        "StridedSlice",
        "Slice",
        "Split",
        "SplitV",
        "Tile",
        "Fill",
        "ZerosLike",
        "OnesLike",
        "Range",
        "Pad",
        "PadV2",
        "MirrorPad",
        "Erf",
        "GreaterEqual",
        "Greater",
        "Less",
        "LessEqual",
        "Equal",
        "NotEqual",
        "LogicalAnd",
        "LogicalNot",
        "LogicalOr",
        "Select",
        "SelectV2",
        # neural-network ops
        "Conv2D",
        "Conv3D",
        "DepthwiseConv2dNative",
        "Conv2DBackpropInput",
        "FusedBatchNormV3",
        "Relu",
        "Relu6",
        "Elu",
        "Selu",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "Softplus",
        "Softsign",
        "Softmax",
        "LogSoftmax",
        "MaxPool",
        "AvgPool",
        "MaxPool3D",
        "AvgPool3D",
        "ResizeBilinear",
        "ResizeNearestNeighbor",
        "RandomUniform",
        "RandomStandardNormal",
    }
)


class UntrustedModelError(ValueError):
    """The model file can run code when loaded, and its code was not trusted."""


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every serialised object (a dict with ``class_name``) anywhere in a config."""
    if isinstance(node, dict):
        if "class_name" in node:
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def _activations(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "activation" and isinstance(value, str):
                yield value
            yield from _activations(value)
    elif isinstance(node, list):
        for value in node:
            yield from _activations(value)


def _object_name(obj: dict[str, Any]) -> str:
    config = obj.get("config")
    name = obj.get("name") or (config.get("name") if isinstance(config, dict) else None)
    return f"{obj['class_name']} layer {name!r}" if name else obj["class_name"]


def config_problems(config: Any) -> list[str]:
    """What in a Keras config can run code: Lambda layers, custom objects, custom activations."""
    problems = []
    for obj in _objects(config):
        class_name = obj["class_name"]
        module = obj.get("module")
        if class_name in ("Lambda", "TFOpLambda", "SlicingOpLambda"):
            problems.append(
                f"{_object_name(obj)} runs Python code or a named TensorFlow function when loaded"
            )
        elif (
            class_name not in ALLOWED_LAYERS | ALLOWED_OBJECTS
            or obj.get("registered_name") not in (None, class_name)
            or (module and not str(module).startswith("keras"))
        ):
            problems.append(f"{_object_name(obj)} is a custom object, not a built-in layer")
    for activation in _activations(config):
        if activation not in ALLOWED_ACTIVATIONS:
            problems.append(f"activation {activation!r} is a custom function")
    return problems


def h5_problems(path: Path) -> list[str]:
    """Read ``model_config`` with h5py (nothing is deserialised) and check it."""
    import h5py

    with h5py.File(path, "r") as handle:
        raw = handle.attrs.get("model_config")
    if raw is None:
        return []  # weights only: loading it fails on its own, with nothing to run
    return config_problems(json.loads(raw.decode() if isinstance(raw, bytes) else raw))


def savedmodel_problems(path: Path) -> list[str]:
    """Check every op of the SavedModel's graphs and its Keras metadata, without loading it."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    ops: set[str] = set()
    for graph in saved.meta_graphs:
        ops.update(node.op for node in graph.graph_def.node)
        for function in graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    problems = [
        f"op {op} is not on the list of allowed TensorFlow ops" for op in sorted(ops - ALLOWED_OPS)
    ]
    metadata_path = path / "keras_metadata.pb"
    if metadata_path.exists():
        from tf_keras.protobuf import saved_metadata_pb2

        metadata = saved_metadata_pb2.SavedMetadata()
        metadata.ParseFromString(metadata_path.read_bytes())
        for node in metadata.nodes:
            problems.extend(config_problems(json.loads(node.metadata or "{}")))
    return list(dict.fromkeys(problems))


def check_trusted(path: Path, fmt: str, trust_code: bool) -> None:
    """Refuse a Keras 2 HDF5 file or SavedModel that can run code, unless ``trust_code``.

    Raises:
        UntrustedModelError: naming the first layers or ops found.
    """
    if trust_code or fmt not in ("keras2-h5", "savedmodel"):
        return
    problems = h5_problems(path) if fmt == "keras2-h5" else savedmodel_problems(path)
    if problems:
        shown = "; ".join(problems[:5]) + (
            f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        )
        raise UntrustedModelError(
            f"{path}: refused, the file can run code when loaded: {shown}. Load it only if you "
            "trust its author: covidscan models add --trust-code (MODEL_TRUST_CODE=true for "
            "MODEL_PATH)"
        )
