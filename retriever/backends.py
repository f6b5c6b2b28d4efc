"""Inference backends for an ``Encoder``: ``torch`` (the model itself), ``compile`` (the same forward through
``torch.compile``), ``onnx`` (ONNX Runtime) and ``openvino`` (OpenVINO), chosen per run with ``--backend``.

The ONNX graph holds the whole forward of ``Encoder``: transformer, pooling (mean / cls / last), Matryoshka
truncation and L2 normalisation, so ``[B, L] input_ids, attention_mask (int64) -> [B, dim] float32``; the
tokenizer and the prompts stay in Python (the same ``Encoder.encode`` loop: prefix, truncate, length-sorted
batches), so every backend sees the same tokens. It is exported with ``torch.onnx.export`` (the TorchScript
exporter with dynamic batch and sequence axes: the dynamo exporter fails on transformers 5's BERT masks).
For ONNX Runtime, BERT-like graphs are then fused by ONNX Runtime's own transformer optimizer
(``export_for_ort``: fused attention, layer norms, GELU), the library's fast path, rather than hand-written kernels.
OpenVINO reads that same ONNX file (``openvino.Core.read_model``; no optimum-intel, which downgrades
transformers) or a saved ``openvino_model.xml``.

Exactness: ONNX Runtime fp32 and OpenVINO with ``INFERENCE_PRECISION_HINT=f32`` are exact up to float
rounding (cosine >= 0.99999 to torch fp32: tests/test_export.py). OpenVINO's CPU default on AMX/AVX512-BF16
CPUs is bf16, so retr sets f32 unless ``--precision bf16`` asks for it. An int8 graph (``quantize_int8``:
ONNX Runtime dynamic quantisation, per-channel weights) is not exact; ``retr export`` reports its parity.

``compile`` is inductor with freezing: the weights are folded into the compiled graph as constants, so the
fp32 linears run as oneDNN matmuls on pre-packed weights with the bias (and GELU where the pattern allows)
fused, and the elementwise work around them (residual adds, layer norms) is fused into generated C++ kernels.
Freezing is switched on by ``torch._inductor.config.patch(freezing=True)`` around each call: passed as
``torch.compile(options={"freezing": True})`` it is not seen by the check that selects the freezing compiler
(torch 2.13; the generated code then calls plain ``addmm``), which is what the first version here did. Frozen
weights are copies: editing the model's weights after the first batch is not seen, and every compiled graph
holds its own packed copy of the linear weights (measured on an 8-layer BERT: ~1 copy per graph; not frozen, a
second graph added ~0). A batch of one therefore runs as two copies of its row (no second graph); a decoder's
length of one still compiles its own, so such a process holds two copies besides the model. It stays fp32
(cosine >= 0.9999998 to torch on MiniLM) and is the fastest exact CPU path measured here (RESULTS.md section
17). Its cost: the first batches of each process compile (~30 s for MiniLM, a C++ compiler is needed; later
processes reuse inductor's on-disk cache), so it pays off on large corpora.

OpenVINO runs a block's batches on ``streams`` parallel infer requests (``AsyncInferQueue``, THROUGHPUT hint,
one stream per thread by default, so one core each): the set-up measured in RESULTS.md section 17. A lone
batch (a served query batch) then runs on one stream, i.e. one core; one stream with all threads was not
measured against it.

Memory: the graph's weights (about the checkpoint's size; int8 about a quarter) besides the torch model,
plus one batch of activations per stream.
References: ONNX Runtime (onnxruntime.ai), OpenVINO (docs.openvino.ai), torch.onnx.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("torch", "compile", "onnx", "openvino")
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "openvino_model.xml"
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"


class PooledGraph(nn.Module):
    """What is exported: ``Encoder``'s forward without the left-padding position ids (``encode`` pads right),
    [B, L] int64 ids and mask -> [B, dim] float32 embeddings (pooled, truncated, normalised)."""

    def __init__(self, encoder: Any):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from .modeling.encoder import pool

        cfg = self.encoder.config
        hidden = self.encoder.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = pool(hidden.float(), attention_mask, cfg.pooling)
        if cfg.truncate_dim is not None:
            emb = emb[:, : cfg.truncate_dim]
        if cfg.normalize:
            emb = nn.functional.normalize(emb, p=2, dim=-1)
        return emb


def export_onnx(encoder: Any, path: str | os.PathLike, opset: int = 17) -> Path:
    """Write ``encoder`` (a ``retr`` ``Encoder``, fp32 weights) as one ONNX graph at ``path``; weights above
    1.5 GB go to external data files beside it. Raises ``ValueError`` for non-fp32 weights or a model the
    exporter cannot trace (one line). Tested on BERT and on Qwen2 and Llama decoders (last-token pooling): tests/test_export.py."""
    if next(encoder.model.parameters()).dtype != torch.float32:
        raise ValueError("export needs fp32 weights (leave --torch-dtype unset)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.full((2, 8), int(encoder.tokenizer.unk_token_id or 1), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    big = sum(p.numel() * p.element_size() for p in encoder.model.parameters()) > 1.5e9
    was_training = encoder.training
    encoder.eval()
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            OUTPUT: {0: "batch"}}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(PooledGraph(encoder), (ids, mask), str(path), input_names=list(INPUTS),
                              output_names=[OUTPUT], dynamic_axes=axes, opset_version=opset, dynamo=False,
                              external_data=big, do_constant_folding=True)
    except (RuntimeError, TypeError, NotImplementedError) as e:  # an architecture the exporter cannot trace
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot export {getattr(encoder, 'name', 'the model')} to ONNX: {first}") from e
    finally:
        encoder.train(was_training)
    return path


FUSABLE = ("bert", "roberta", "xlm-roberta", "camembert", "electra")  # BERT-like: ORT's "bert" fusions apply


def export_for_ort(encoder: Any, path: str | os.PathLike) -> bool:
    """Write the graph ONNX Runtime runs fastest at ``path``: for BERT-like models (``FUSABLE``) the model is
    exported with eager attention and ``onnxruntime.transformers.optimizer`` fuses it (Attention,
    EmbedLayerNormalization, SkipLayerNormalization, BiasGelu: com.microsoft operators, so ONNX Runtime only;
    still exact, cosine >= 0.99999). Other models, or when no attention fuses, get the plain graph. Returns
    whether the graph is fused."""
    path = Path(path)
    cfg = encoder.model.config
    if getattr(cfg, "model_type", "") not in FUSABLE or not hasattr(encoder.model, "set_attn_implementation"):
        export_onnx(encoder, path)
        return False
    previous = getattr(cfg, "_attn_implementation", None) or "sdpa"
    plain = path.with_name(path.stem + ".plain.onnx")
    try:
        encoder.model.set_attn_implementation("eager")  # the attention pattern ORT's fusion recognises
        export_onnx(encoder, plain)
    finally:
        encoder.model.set_attn_implementation(previous)
    from onnxruntime.transformers.optimizer import optimize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("onnxruntime").setLevel(logging.ERROR)
        fused = optimize_model(str(plain), model_type="bert", num_heads=int(cfg.num_attention_heads),
                               hidden_size=int(cfg.hidden_size), opt_level=1)
    if not fused.get_fused_operator_statistics().get("Attention"):
        os.replace(plain, path)
        return False
    fused.save_model_to_file(str(path))
    plain.unlink()
    return True


def has_ort_ops(path: str | os.PathLike) -> bool:
    """Whether an ONNX file uses ONNX Runtime's own (com.microsoft) operators, which OpenVINO cannot read."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.domain == "com.microsoft" for node in graph.node)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ONNX Runtime dynamic int8 quantisation of ``src`` (per-channel weights, activations quantised per
    batch at run time) written to ``dst``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # DefaultTensorType: shape inference cannot type the outputs of ORT's fused operators (float32 here)
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return Path(dst)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (first 16 hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _threads(threads: int | None) -> int:
    return int(threads) if threads else torch.get_num_threads()


class OnnxRunner:
    """ONNX Runtime session (all graph optimisations, ``threads`` intra-op threads, default torch's)."""

    kind = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = _threads(threads)
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path, self.digest = Path(path), file_digest(path)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """[B, L] int64 arrays -> [B, dim] float32."""
        return self.session.run([OUTPUT], {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def run_many(self, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [self(i, m) for i, m in batches]


class OpenVinoRunner:
    """OpenVINO CPU model compiled from an ONNX file or an ``openvino_model.xml``; ``precision`` f32 (exact),
    bf16 or f16 is the inference precision hint; ``streams`` infer requests run batches in parallel."""

    kind = "openvino"

    def __init__(self, path: str | os.PathLike, precision: str = "f32", threads: int | None = None,
                 streams: int | None = None):
        import openvino as ov

        threads = _threads(threads)
        self.streams = int(streams or threads)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
                  "NUM_STREAMS": self.streams, "PERFORMANCE_HINT": "THROUGHPUT"}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.path, self.digest, self.precision = Path(path), file_digest(path), precision
        self._queue = ov.AsyncInferQueue(self.compiled, self.streams)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.run_many([(input_ids, attention_mask)])[0]

    def run_many(self, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Every batch on the next free infer request; results in input order."""
        out: list[Any] = [None] * len(batches)

        def done(request: Any, i: int) -> None:
            out[i] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

        self._queue.set_callback(done)
        for i, (ids, mask) in enumerate(batches):
            self._queue.start_async({"input_ids": ids, "attention_mask": mask}, userdata=i)
        self._queue.wait_all()
        return out


def cpp_compiler() -> str:
    """The C++ compiler ``--backend compile`` hands to inductor: ``$CXX`` when set, else the first of g++, c++,
    clang++ on PATH (inductor alone tries only ``$CXX`` or g++). ``ValueError`` (one line) when there is none."""
    wanted = os.environ.get("CXX")
    for name in [wanted] if wanted else ["g++", "c++", "clang++"]:
        found = shutil.which(name)
        if found:
            return found
    if wanted:
        raise ValueError(f"--backend compile: the C++ compiler CXX={wanted} is not found (torch.compile writes "
                         "C++ kernels for the CPU)")
    raise ValueError("--backend compile needs a C++ compiler on PATH (g++ or clang++; or set CXX): "
                     "torch.compile writes C++ kernels for the CPU")


def freezing() -> contextlib.AbstractContextManager:
    """Inductor's freezing, on for what compiles inside the block (see the module docstring for why not as a
    ``torch.compile`` option)."""
    from torch._inductor import config

    return config.patch(freezing=True)


class CompiledRunner:
    """``PooledGraph`` of ``encoder`` through ``torch.compile`` (inductor, ``dynamic`` batch and length,
    ``freezing``), run under ``inference_mode``; ``precision`` f32 (exact) or bf16 (autocast). Compiles on the
    first call (and once more for a new rank of shapes, e.g. a decoder's length of one); raises ``ValueError``
    when no C++ compiler is found (inductor's CPU kernels are C++; ``cpp_compiler``). Memory: the torch model,
    one frozen copy of its linear weights per compiled graph (module docstring) and one batch of activations (peak RSS of a
    MiniLM SciFact eval, measured before freezing was really on: 2.3 GB, RESULTS.md section 17)."""

    kind = "compile"

    def __init__(self, encoder: Any, precision: str = "f32", freeze: bool = True):
        cxx = cpp_compiler()
        self.freeze = freeze  # False only to measure what freezing buys (benchmarks/encode.py --compile)
        self.graph = PooledGraph(encoder).eval()
        # dynamo keeps compiled graphs (and counts recompiles, limit 8) per code object: a copy of forward's code
        # per runner, so other runners in the process (towers, models, shapes) neither share its cache nor push
        # it over the limit, past which dynamo silently runs eager
        f = PooledGraph.forward
        own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
        self.graph.forward = types.MethodType(own, self.graph)  # type: ignore[method-assign]
        self.device = next(encoder.model.parameters()).device
        self.precision, self.digest = precision, "inductor"
        # inductor itself only tries $CXX or g++: hand it the compiler found here (c++ / clang++ without g++)
        self.fn = torch.compile(self.graph, dynamic=True, options={"cpp.cxx": (None, cxx)})
        log.info("--backend compile: torch.compile (inductor) compiles on the first batches (~30 s for MiniLM)")

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """[B, L] int64 arrays -> [B, dim] float32. A batch of one runs as two copies of its row: dynamo
        specialises a dimension of size 1, so a lone query (``retr serve``, ``search``) would otherwise compile
        a second graph (~30 s for MiniLM) holding a second frozen copy of the weights."""
        one = input_ids.shape[0] == 1
        if one:
            input_ids, attention_mask = np.repeat(input_ids, 2, axis=0), np.repeat(attention_mask, 2, axis=0)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast, (freezing() if self.freeze else contextlib.nullcontext()):
            ids = torch.from_numpy(np.ascontiguousarray(input_ids)).to(self.device)
            mask = torch.from_numpy(np.ascontiguousarray(attention_mask)).to(self.device)
            out = self.fn(ids, mask).float().cpu().numpy()
        return out[:1] if one else out

    def run_many(self, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [self(i, m) for i, m in batches]


def make_runner(backend: str, encoder: Any, precision: str = "auto", model_dir: str | os.PathLike | None = None,
                threads: int | None = None) -> Any:
    """The runner of ``backend`` for ``encoder``: from the export in ``model_dir`` (``retr export``: ``model.onnx``,
    ``openvino_model.xml``) when there is one, else exported now into a temp dir that is removed once loaded.
    ``None`` for ``torch``. ``ValueError`` for an unknown backend or a precision it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return None
    if precision in ("auto", "fp32"):
        hint = "f32"
    elif backend == "compile" and precision == "bf16":
        hint = "bf16"
    elif backend == "openvino":
        hint = {"bf16": "bf16", "fp16": "f16"}[precision]
    elif backend == "compile":
        raise ValueError(f"--precision {precision} does not apply to --backend compile (fp32 or bf16)")
    else:
        raise ValueError(f"--precision {precision} does not apply to --backend onnx (fp32 only; an int8 graph "
                         "comes from `retr export --quantize int8`)")
    if backend == "compile":
        return CompiledRunner(encoder, hint)
    model_dir = Path(model_dir) if model_dir else None
    if model_dir is not None and backend == "openvino" and (model_dir / OPENVINO_FILE).exists():
        return OpenVinoRunner(model_dir / OPENVINO_FILE, hint, threads)
    if model_dir is not None and (model_dir / ONNX_FILE).exists():
        path = model_dir / ONNX_FILE
        if backend == "onnx":
            return OnnxRunner(path, threads)
        if not has_ort_ops(path):  # an ORT-fused export: OpenVINO gets a plain graph exported below
            return OpenVinoRunner(path, hint, threads)
    tmp = Path(tempfile.mkdtemp(prefix="retr-onnx-"))
    try:
        log.info("exporting %s to ONNX for --backend %s", getattr(encoder, "name", "the model"), backend)
        if backend == "onnx":
            export_for_ort(encoder, tmp / ONNX_FILE)
            return OnnxRunner(tmp / ONNX_FILE, threads)
        return OpenVinoRunner(export_onnx(encoder, tmp / ONNX_FILE), hint, threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def backend_id(runner: Any) -> str | None:
    """What identifies a runner's vectors (for resume keys): kind and graph checksum; ``None`` for torch."""
    if runner is None:
        return None
    return f"{runner.kind}:{getattr(runner, 'precision', 'f32')}:{runner.digest}"
