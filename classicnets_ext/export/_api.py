"""Export and check helpers shared by the CLI and the tests: ONNX (torch.onnx, dynamo exporter) and .pt2
(torch.export) files of a model, and an onnxruntime run of an ONNX file."""
from __future__ import annotations

import re

import torch

# torch.onnx stores the weights inside the .onnx file below this size (protobuf's limit is 2 GiB).
_EXTERNAL_DATA_BYTES = 1 << 30


class UnsupportedExportError(RuntimeError):
    """A model uses an option of our ops that the target format cannot express."""


def parse_input_size(text: str) -> tuple[int, ...]:
    """``"3x227x227"`` -> ``(3, 227, 227)``: the per-sample (C, H, W) shape."""
    if not re.fullmatch(r"\s*\d+(\s*x\s*\d+){2}\s*", text or "", flags=re.IGNORECASE):
        raise ValueError(f"argument --input: expected C x H x W such as 3x227x227, got {text!r}")
    size = tuple(int(v) for v in text.lower().split("x"))
    if 0 in size:
        raise ValueError(f"argument --input: sizes must be positive, got {text!r}")
    return size


def _batch_dims(example: torch.Tensor, dynamic_batch: bool):
    """(example, dynamic_shapes): a dynamic batch is traced with a batch of 2 -- torch.export specialises
    sizes 0 and 1 -- so a batch-1 example is repeated."""
    if not dynamic_batch:
        return example, None
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    return example, ({0: torch.export.Dim("batch", min=1)},)


def _unsupported_cause(error: BaseException) -> Exception | None:
    """The error one of our translations raised (its message starts "ONNX export:"; they raise ValueError),
    somewhere in torch.onnx's exception chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ValueError, NotImplementedError)) and str(error).startswith("ONNX export:"):
            return error
        error = error.__cause__ or error.__context__
    return None


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path, *, dynamic_batch: bool = False,
                **kwargs):
    """``torch.onnx.export(model, (example,), path, dynamo=True)`` with a dynamic batch dimension on request;
    returns the ``ONNXProgram``. An option of our ops ONNX cannot express raises
    :class:`UnsupportedExportError` naming it. ``kwargs`` go to ``torch.onnx.export``."""
    from . import ONNX_REGISTRATION_ERROR, onnx_translation_table

    example, dynamic_shapes = _batch_dims(example, dynamic_batch)
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    kwargs.setdefault("external_data", weight_bytes > _EXTERNAL_DATA_BYTES)
    kwargs.setdefault("verbose", False)
    if ONNX_REGISTRATION_ERROR is not None:
        kwargs.setdefault("custom_translation_table", onnx_translation_table())
    try:
        return torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=dynamic_shapes, **kwargs)
    except Exception as e:
        cause = _unsupported_cause(e)
        if cause is None:
            raise
        raise UnsupportedExportError(str(cause)) from e


def export_pt2(model: torch.nn.Module, example: torch.Tensor, path, *, dynamic_batch: bool = False):
    """``torch.export.export`` + ``torch.export.save`` of the inference graph; returns the ``ExportedProgram``.
    Loading the file needs ``import classicnets_ext`` (it registers the ops) before ``torch.export.load``; an
    archive traced under the "triton" backend imports the Triton kernels as it loads.

    Traced under ``torch.no_grad()``; while a graph is being captured the ops still save what a backward reads
    (the max-pool argmax, the fused op's pooled copy), so the archive also trains (see ``ops.py``)."""
    example, dynamic_shapes = _batch_dims(example, dynamic_batch)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    # Opened here so that an unwritable path is an OSError, as for any file; torch.export.save given a path
    # raises its writer's RuntimeError.
    with open(path, "wb") as f:
        torch.export.save(program, f)
    return program


def run_onnxruntime(path, x: torch.Tensor, *, threads: int | None = None, session=None):
    """The model's first output for ``x`` on onnxruntime's CPU provider, as a torch tensor (pass ``session``
    to reuse one from :func:`onnxruntime_session`)."""
    session = session or onnxruntime_session(path, threads=threads)
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


def onnxruntime_session(path, *, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
