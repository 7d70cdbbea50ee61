"""Projection heads (``HEADS``: ``"identity"``, ``"linear"``, ``"mlp"``): ``(in_dim, out_dim, ...)``,
``(B, in_dim) -> (B, out_dim)``."""
from __future__ import annotations

from typing import Annotated, List, Optional

from torch import Tensor, nn

from alignkit.core.params import check_choice
from alignkit.core.registry import HEADS, ConfigError
from alignkit.core.params import AT_LEAST_ONE, OneOf, Range

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


@HEADS.register("identity")
def identity_head(in_dim: int, out_dim: int) -> nn.Identity:
    """``z = x``; needs ``in_dim == out_dim``."""
    if in_dim != out_dim:
        raise ConfigError(f"the identity head needs the encoder's output_dim ({in_dim}) to equal embed_dim "
                          f"({out_dim}); use head: linear or mlp, or change embed_dim")
    return nn.Identity()


@HEADS.register("linear")
def linear_head(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """``z = W x (+ b)``."""
    return nn.Linear(in_dim, out_dim, bias=bias)


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """``num_layers`` linear layers with ``[LayerNorm] - activation - [Dropout]`` between them.

    ``z = W_L f(... f(W_1 x))``, ``f = dropout(act(norm(.)))``, hidden width ``hidden_dim`` (default
    ``in_dim``). With ``residual``, ``z += x`` if ``in_dim == out_dim``, else ``z += P x`` with a bias-free
    linear ``P``. ``num_layers=1`` is a linear head. ``bias=False``: bias-free linear layers (open_clip's
    ``HFTextEncoder`` ``mlp`` projection is ``hidden_dim = (in_dim + out_dim) // 2``, ``num_layers=2``, gelu,
    ``bias=False``).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: Optional[Annotated[int, AT_LEAST_ONE]] = None,
                 num_layers: Annotated[int, AT_LEAST_ONE] = 2,
                 activation: Annotated[str, OneOf(tuple(ACTIVATIONS))] = "gelu",
                 dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0, layer_norm: bool = False, residual: bool = False,
                 bias: bool = True):
        super().__init__()
        check_choice(activation, tuple(ACTIVATIONS), "mlp head activation")
        if num_layers < 1:
            raise ConfigError(f"mlp head num_layers must be >= 1; got {num_layers}")
        hidden = hidden_dim or in_dim
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        layers: List[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out, bias=bias))
            if i < num_layers - 1:
                layers += [nn.LayerNorm(d_out)] if layer_norm else []
                layers.append(ACTIVATIONS[activation]())
                layers += [nn.Dropout(dropout)] if dropout > 0 else []
        self.mlp = nn.Sequential(*layers)
        self.skip: Optional[nn.Module] = None
        if residual:
            self.skip = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        z = self.mlp(x)
        return z + self.skip(x) if self.skip is not None else z


__all__ = ["ACTIVATIONS", "identity_head", "linear_head", "MLPHead"]
