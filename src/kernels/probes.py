"""Each CPU kernel and the PyTorch op it replaces, run on the model's own shapes.

A probe is a pair of calls that do the same work, one through the kernel and one through
PyTorch, so that timing them says which is faster on this machine for this model. They
are kept small (one layer, one sequence and one key/value head for attention, at most
`LINEAR_ROWS` rows for the matmuls) so that deciding costs seconds for SmolLM2-135M, but
each keeps the ratios of the real step: one layer's seven projections plus the head's
share of a layer. Decoding is the exception in size: a one-token step streams every weight
from memory, so its probe reads the whole head and as many layers' weights as the model
has, up to `DECODING_WEIGHT_BYTES`: one layer's would sit in cache and time another regime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from src.kernels.attention import BlockwiseCausalAttention
from src.kernels.linear import OneDNNLinear, OneDNNLinearTorchWeightGrad
from src.kernels.packed_linear import PackedLinear, packing_available
from src.kernels.rms_norm import FusedRMSNorm
from src.kernels.upcast import UPCAST_MIN_ROWS, UpcastCausalAttention, UpcastLinear
from src.models.config import SmolLM2Config
from src.models.smollm2 import RMSNorm, ScaledDotProductAttention

LINEAR_ROWS = 512  # tokens per probed matmul in training: already past the small-matrix regime
NORM_ROWS = 4096
DECODING_WEIGHT_BYTES = 256 * 2**20  # more than the last-level cache of the CPUs we run on


@dataclass(frozen=True)
class Workload:
    """What the kernels would run: the model's shapes, the compute dtype, training or decoding.

    `dtype` is the autocast dtype in training (float32 without autocast) and the weights'
    dtype in decoding; decoding runs `batch_size` rows one token at a time. `compiled`: a
    training step under `compile=true`, where only `ACTS_COMPILED` kernels act (the others
    run PyTorch's op, which Inductor fuses itself); their probes still time eager calls.
    """

    config: SmolLM2Config
    batch_size: int
    seq_len: int
    dtype: torch.dtype
    training: bool
    compiled: bool = False

    def key(self) -> str:
        """The shapes and dtype as a string, part of a cached timing's key."""
        c = self.config
        mode = f"train B{self.batch_size} T{self.seq_len}" if self.training else f"decode B{self.batch_size}"
        model = f"C{c.hidden_size} I{c.intermediate_size} H{c.num_heads} K{c.num_kv_heads}"
        model += f" L{c.num_layers} V{c.vocab_size}"
        return f"{mode} {model} {str(self.dtype).removeprefix('torch.')}"


@dataclass(frozen=True)
class Probe:
    """The same work through the kernel (`kernel`) and through PyTorch's op (`pytorch`)."""

    kernel: Callable[[], None]
    pytorch: Callable[[], None]


# The kernels that act inside a torch.compile graph (the upcast attention as the blockwise one,
# without its upcast): the others step aside there (each one's forward checks
# `torch.compiler.is_compiling()`), as Inductor cannot lower their ops or fuses PyTorch's own.
ACTS_COMPILED = frozenset({"causal_attention", "upcast_attention"})


def probe(kernel: str, workload: Workload) -> Probe | str:
    """The probe of `kernel` on `workload`, or why the kernel cannot act there (a string)."""
    if workload.compiled and kernel not in ACTS_COMPILED:
        return "steps aside under torch.compile"
    return _PROBES[kernel](workload)


def _training_step(
    fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], dtype: torch.dtype, params=()
) -> Callable[[], None]:
    """Forward and backward of `fn(*inputs)`, under bf16 autocast if `dtype` is bf16; the
    gradients of inputs and `params` (a module's own, by default) are dropped after each
    call, as `zero_grad(set_to_none=True)` does."""
    params = list(fn.parameters()) if isinstance(fn, nn.Module) else list(params)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = fn(*inputs)
        y.backward(torch.ones_like(y))
        for t in [*inputs, *params]:
            t.grad = None

    return step


def _attention(w: Workload, attention: type[nn.Module] = BlockwiseCausalAttention) -> Probe | str:
    if not w.training:
        return "unused by cached decoding"
    c = w.config
    # One sequence and one group of query heads sharing a key/value head, laid out as the model's.
    group = c.num_heads // c.num_kv_heads
    q = torch.randn(1, w.seq_len, group, c.head_dim, dtype=w.dtype).requires_grad_()
    k = torch.randn(1, w.seq_len, 1, c.head_dim, dtype=w.dtype).requires_grad_()
    v = torch.randn(k.shape, dtype=w.dtype).requires_grad_()

    def step(attention: nn.Module) -> Callable[[], None]:
        # The model hands attention (B, H, T, D) views of (B, T, H, D) tensors.
        return _training_step(lambda *qkv: attention(*(t.transpose(1, 2) for t in qkv)), [q, k, v], w.dtype)

    return Probe(step(attention()), step(ScaledDotProductAttention()))


def _upcast_attention(w: Workload) -> Probe | str:
    if w.dtype != torch.bfloat16:
        return "acts on bf16 only"
    return _attention(w, UpcastCausalAttention)


def _rms_norm(w: Workload) -> Probe | str:
    if not w.training:
        return "acts only when gradients are wanted"
    c = w.config
    x = torch.randn(min(w.batch_size * w.seq_len, NORM_ROWS), c.hidden_size).requires_grad_()
    plain = RMSNorm(c.hidden_size, c.rms_norm_eps)
    fused = FusedRMSNorm.from_norm(plain)
    # The plain norm's output is cast by the projections that read it: counted here as one cast.
    return Probe(
        _training_step(fused, [x], w.dtype),
        _training_step(lambda x: plain(x).to(w.dtype), [x], w.dtype, params=[plain.weight]),
    )


def _layer_and_head_shapes(c: SmolLM2Config) -> list[tuple[int, int]]:
    """(in, out) of one layer's seven projections and of a slice of the LM head of
    1/num_layers its width: the head's share of a layer, so the mix of shapes is that of a
    whole step."""
    kv = c.num_kv_heads * c.head_dim
    shapes = [(c.hidden_size, c.hidden_size)] * 2 + [(c.hidden_size, kv)] * 2
    shapes += [(c.hidden_size, c.intermediate_size)] * 2 + [(c.intermediate_size, c.hidden_size)]
    return [*shapes, (c.hidden_size, max(c.vocab_size // c.num_layers, 1))]


def _decoding_shapes(c: SmolLM2Config, dtype: torch.dtype) -> list[tuple[int, int]]:
    """(in, out) of the products of a decoding probe: the whole LM head once, as a decoding
    step multiplies it (a slice of it would sit in cache, where the head does not), then the
    projections of all the model's layers, or of as many as fit `DECODING_WEIGHT_BYTES` with it."""
    head = (c.hidden_size, c.vocab_size)
    layer = _layer_and_head_shapes(c)[:-1]
    layer_bytes = sum(i * o for i, o in layer) * dtype.itemsize
    budget = DECODING_WEIGHT_BYTES - head[0] * head[1] * dtype.itemsize
    return [head] + layer * max(1, min(c.num_layers, budget // layer_bytes))


def _onednn_linear(w: Workload, linear: type[OneDNNLinear] = OneDNNLinear) -> Probe | str:
    if w.dtype != torch.float32:
        return "acts on fp32 only"
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN"
    return _linears(w, linear.from_linear)


def _onednn_linear_torch_wgrad(w: Workload) -> Probe | str:
    if w.training or w.dtype != torch.float32:
        return _onednn_linear(w, OneDNNLinearTorchWeightGrad)
    return "onednn_linear without gradients"


def _packed_linear(w: Workload) -> Probe | str:
    if w.training:
        return "acts in inference only"
    if w.dtype != torch.bfloat16:
        return "acts on bf16 only"
    if not packing_available():
        return "no oneDNN bf16 on this CPU or PyTorch build"
    return _linears(w, PackedLinear.from_linear)


def _upcast_linear(w: Workload) -> Probe | str:
    if w.dtype != torch.bfloat16:
        return "acts on bf16 only"
    # Decoding: the fewest rows it upcasts (it leaves fewer to PyTorch), where it gains least.
    return _linears(w, UpcastLinear.from_linear, decoding_rows=max(w.batch_size, UPCAST_MIN_ROWS))


def _linears(
    w: Workload, replace: Callable[[nn.Linear], nn.Linear], decoding_rows: int | None = None
) -> Probe:
    """The step's matmuls through `replace`d linears against plain ones: forward and backward
    of one layer's share in training, products of one token per sequence (or `decoding_rows`
    rows) over `_decoding_shapes` in decoding (weights in the workload's dtype)."""
    weight_dtype = torch.float32 if w.training else w.dtype  # training casts under autocast
    shapes = _layer_and_head_shapes(w.config) if w.training else _decoding_shapes(w.config, w.dtype)
    plain = [nn.Linear(i, o, bias=False, dtype=weight_dtype) for i, o in shapes]
    ours = [replace(layer) for layer in plain]
    rows = min(w.batch_size * w.seq_len, LINEAR_ROWS) if w.training else decoding_rows or w.batch_size
    inputs = {
        n: torch.randn(rows, n, dtype=weight_dtype).requires_grad_(w.training)
        for n in {layer.in_features for layer in plain}
    }

    def run(layers: list[nn.Linear]) -> Callable[[], None]:
        steps = [_training_step(layer, [inputs[layer.in_features]], w.dtype) for layer in layers]

        def call() -> None:
            if w.training:
                for step in steps:
                    step()
                return
            with torch.inference_mode():
                for layer in layers:
                    layer(inputs[layer.in_features])

        return call

    return Probe(run(ours), run(plain))


_PROBES: dict[str, Callable[[Workload], Probe | str]] = {
    "causal_attention": _attention,
    "rms_norm": _rms_norm,
    "onednn_linear": _onednn_linear,
    "onednn_linear_torch_wgrad": _onednn_linear_torch_wgrad,
    "packed_linear": _packed_linear,
    "upcast_attention": _upcast_attention,
    "upcast_linear": _upcast_linear,
}
