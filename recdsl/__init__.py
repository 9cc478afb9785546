"""recdsl: a compiler for linear recurrences.

    spec = recdsl.load("examples/deltaproduct.rec", n_h=3)   # parse, lower, verify, analyse
    o, S = spec.op(q, k, v, beta, output_final_state=True)     # the core op, fla's layout
    layer = recdsl.compile("examples/gla.rec", d_model=256)    # an nn.Module [B, T, d_model] -> same
"""
import os as _os

# An installed wheel holds recdsl/grammar and recdsl/backends; a checkout keeps them beside recdsl/
# (grammar/, backends/) so the folders show the pipeline. Running from a checkout, resolve the same names.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "backends")) and \
        _os.path.isfile(_os.path.join(_root, "backends", "reference.py")):
    __path__.append(_root)

from .errors import RecError, RecNotConverged, RecSemanticError, RecSyntaxError
from .short_conv import LayerState
from .spec import Spec, load

__version__ = "0.1.0"


def compile(path_or_text, backend: str = "auto", device=None, dtype=None, **params):
    """Compile a spec into a trainable nn.Module (the layer around the core, see the spec's `layer:`)."""
    from .module import RecModule
    return RecModule(load(path_or_text, **params), backend=backend, device=device, dtype=dtype)


__all__ = ["load", "compile", "Spec", "LayerState", "RecError", "RecSyntaxError", "RecSemanticError", "RecNotConverged"]
