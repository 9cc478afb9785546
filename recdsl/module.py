"""The layer around a spec's core, as an nn.Module mapping [B, T, d_model] to [B, T, d_model]."""
from __future__ import annotations

import math

import torch
from torch import nn

from .evaluate import Evaluator
from .short_conv import LayerState, short_conv
from .spec import Spec


class RecModule(nn.Module):
    """A compiled `.rec` layer. Projections, norms and MLPs come from the spec's `layer:` block;
    weights declared in the core (`weight A_log[D, N] = ...`) are parameters, initialised by their
    initialisers."""

    def __init__(self, spec: Spec, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if not spec.ir.roots_with("layer:"):
            raise ValueError(f"spec {spec.name!r} has no `layer:` block; use recdsl.load(...).op for the core")
        self.spec, self.backend = spec, backend
        self.d_model = int(dict(spec.params)["d_model"])
        kw = {"device": device, "dtype": dtype}
        ir = spec.ir
        self.proj = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        self.convs = nn.ModuleDict()     # in the layer's order: a LayerState lists their inputs in it
        for i in ir.order():
            n = ir.node(i)
            if n.op in ("linear", "mlp"):
                label, width = n.args
                d_in = math.prod(ir.node(ir.operands(i)[0]).shape)
                d_out = math.prod(n.shape)
                if n.op == "linear":
                    self.proj[label] = nn.Linear(d_in, d_out, bias=False, **kw) if not width else \
                        nn.Sequential(nn.Linear(d_in, width, bias=False, **kw), nn.Linear(width, d_out, **kw))
                else:
                    self.proj[label] = nn.Sequential(nn.Linear(d_in, width, **kw), nn.ReLU(),
                                                     nn.Linear(width, d_out, **kw))
            elif n.op in ("rmsnorm", "layernorm"):
                cls = nn.RMSNorm if n.op == "rmsnorm" else nn.LayerNorm
                self.norms[str(i)] = cls(n.shape[-1], eps=1e-5, **kw)
            elif n.op == "shortconv":
                label, size = n.args
                C = math.prod(n.shape)
                self.convs[label] = nn.Conv1d(C, C, size, groups=C, bias=False, **kw)
        H = spec.heads
        self.weights = nn.ParameterDict({
            a.name: nn.Parameter(torch.empty(((H,) if H else ()) + a.shape, **kw))
            for a in spec.args if a.kind == "weight"})
        self.last_solve = None
        # the layer's schedule as plain data, so forward never queries the graph (torch.compile traces it)
        self._schedule = [(name, i, ir.reads(i, "core_output")) for name, i in ir.roots_with("layer:")]
        self._input_roots = [(a.name, ir.root(f"layer:{a.name}")) for a in spec.args
                             if a.kind == "input" and ir.root(f"layer:{a.name}") is not None]
        self._out_root = ir.root("layer:out")
        if backend != "reference":
            from .planner import prepare
            prepare(spec)
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        ir = self.spec.ir
        for a in self.spec.args:
            if a.kind != "weight":
                continue
            root = ir.root(f"init:{a.name}")
            with torch.no_grad():
                p = self.weights[a.name]
                if root is None:
                    nn.init.normal_(p, std=0.02)
                else:
                    p.copy_(_initialise(ir, root, p))

    @property
    def device(self):
        return next(self.parameters()).device

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    def init_state(self, batch: int):
        """The state before a sequence: the core's zero state, or with short convolutions in the layer a
        LayerState that also holds their (zero) inputs before the sequence."""
        core = torch.zeros(self.spec.state_shape(batch), dtype=torch.float32, device=self.device)
        if not self.convs:
            return core
        return LayerState(core, tuple(torch.zeros(batch, c.kernel_size[0] - 1, c.in_channels, dtype=self.dtype,
                                                  device=self.device) for c in self.convs.values()))

    def forward(self, x: torch.Tensor, initial_state=None, output_final_state: bool = False, cu_seqlens=None):
        """x [B, T, d_model] -> (y [B, T, d_model], the final state or None). With short convolutions in the
        layer, states are LayerStates (init_state's form): the core's state and the convolutions' inputs."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected shape [B, T, d_model={self.d_model}], got {list(x.shape)}")
        ir, spec = self.spec.ir, self.spec
        B, T = x.shape[:2]
        core = {}
        conv_tails, conv_finals = None, {}
        if self.convs and initial_state is not None:
            if not isinstance(initial_state, LayerState):
                raise ValueError("initial_state: this layer has short convolutions, so its state is a LayerState "
                                 "(the core's state and the convolutions' last inputs); take it from init_state() "
                                 "or from a call with output_final_state=True")
            initial_state, conv_tails = initial_state.core, dict(zip(self.convs, initial_state.convs))

        def leaf(i, n):
            if n.op == "hidden":
                return x
            if n.op == "core_output":
                return core["o"]
            raise ValueError(f"unexpected leaf {n.op} in the layer")

        def layer_op(i, n, vals):
            if n.op in ("linear", "mlp"):
                v = vals[0].reshape(B, T, -1)
                return self.proj[n.args[0]](v).reshape(B, T, *n.shape)
            if n.op in ("rmsnorm", "layernorm"):
                return self.norms[str(i)](vals[0])
            if n.op == "colnorm":
                return colnorm(vals[0], n.args[0])
            if n.op == "shortconv":
                label = n.args[0]
                y, conv_finals[label] = short_conv(vals[0].reshape(B, T, -1), self.convs[label].weight,
                                                   conv_tails[label] if conv_tails else None, cu_seqlens)
                return y.reshape(vals[0].shape)
            raise ValueError(f"unexpected op {n.op} in the layer")

        ev = Evaluator(ir, leaf, layer_op)
        final = None
        for name, i, reads_core in self._schedule:
            if "o" not in core and reads_core:
                inputs = {n: ev(r) for n, r in self._input_roots}
                weights = {k: v for k, v in self.weights.items()}
                from .opcall import call_op
                core["o"], final, self.last_solve = call_op(spec, (), {**inputs, **weights}, initial_state,
                                                            output_final_state, cu_seqlens, self.backend)
            ev(i)
        out = ev(self._out_root)
        if self.convs and output_final_state:
            final = LayerState(final, tuple(conv_finals[label] for label in self.convs))
        return out, final

    def step(self, x_t: torch.Tensor, state):
        """One token: x_t [B, d_model], state as from init_state (a tensor, or a LayerState where the layer
        has short convolutions). Returns (y_t [B, d_model], the new state in the same form)."""
        if shifted_output(self.spec.ir):
            out = self.spec.output_name
            raise ValueError(f"{self.spec.name}: step() cannot go on token by token: prev({out}, shift = 1) reads the "
                             f"previous token's output, which the carried state does not hold (each call starts it "
                             f"from zeros); run the whole sequence through forward()")
        y, S = self.forward(x_t.unsqueeze(1), initial_state=state, output_final_state=True)
        return y.squeeze(1), S

    def extra_repr(self) -> str:
        a = self.spec.analysis
        params = ", ".join(f"{k}={v:g}" for k, v in self.spec.params)
        return f"spec={self.spec.name}({params}), family={a.family} [{a.detail}], eigenvalues in {a.eig_range}"



def shifted_output(ir) -> bool:
    """Whether the spec reads prev(<output>, shift = 1): a call then starts that shift from zeros, also after an
    initial state, so calls with a carried state do not continue a sequence exactly."""
    out = ir.roots_with("output:")[0][0]
    return any(ir.node(i).op == "prev" and ir.node(i).args == (out, 1) for i in ir.graph.nodes)


def colnorm(M: torch.Tensor, p: float) -> torch.Tensor:
    """Fan et al. 2024: give every column of each block zero mean, then divide each block by its
    largest column p-norm."""
    M = M - M.mean(dim=-2, keepdim=True)
    norms = M.abs().pow(p).sum(dim=-2).pow(1 / p).amax(dim=-1, keepdim=True).unsqueeze(-1)
    return M / norms.clamp_min(1e-6)


def _initialise(ir, root: int, p: torch.Tensor) -> torch.Tensor:
    """Evaluate a weight initialiser over the weight's full shape ([H, *shape] or [*shape])."""
    shape = p.shape
    heads = ir.heads is not None

    def leaf(i, n):
        if n.op == "index":
            if n.args[0] == "head":
                h = torch.arange(shape[0], dtype=torch.float64) if heads else torch.zeros(())
                return h.reshape((-1,) + (1,) * (len(shape) - 1)) if heads else h
            return torch.arange(shape[-1], dtype=torch.float64) if shape else torch.zeros(())
        raise ValueError(f"unexpected leaf {n.op} in an initialiser")

    def layer_op(i, n, vals):
        if n.op == "uniform":
            lo, hi = (float(v) for v in vals)
            return torch.empty(shape, dtype=torch.float64).uniform_(lo, hi)
        if n.op == "normal":
            return torch.empty(shape, dtype=torch.float64).normal_(0, float(vals[0]))
        raise ValueError(n.op)

    # the initialiser's per-token ranks are those of its own nodes; evaluate with no batch axes
    v = Evaluator(ir, leaf, layer_op)(root)
    return torch.as_tensor(v, dtype=torch.float64).expand(shape).to(p.dtype)
