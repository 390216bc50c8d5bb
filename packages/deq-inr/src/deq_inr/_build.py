"""Model names -> constructors: ``isiren``, ``imfn-fourier``, ``imfn-gabor`` (implicit), ``siren``, ``mfn-fourier``,
``mfn-gabor`` (explicit)."""

from __future__ import annotations

from typing import Any

from torch import nn

from deq_core import UnknownNameError

from ._models import ExplicitINR, ImplicitINR, Siren

__all__ = ["MODELS", "build_model", "model_from_config"]

MODELS: dict[str, tuple[str, bool, str]] = {
    "isiren": ("siren", True, "iSIREN: z = sin(W(z + sin(Omega0 x + phi0)) + b + Omega1 x + phi1), spectral norm 0.97"),
    "imfn-fourier": ("fourier", True, "Fourier iMFN: z = g1(x) * (W(z + g0(x)) + b), sine filters"),
    "imfn-gabor": ("gabor", True, "Gabor iMFN: z = g1(x) * (W(z + g0(x)) + b), Gabor filters"),
    "siren": ("siren", False, "explicit SIREN (input injection by default; injection=False: classic omega0=30)"),
    "mfn-fourier": ("fourier", False, "explicit Fourier MFN with layers+1 filters"),
    "mfn-gabor": ("gabor", False, "explicit Gabor MFN with layers+1 filters"),
}


def build_model(name: str, in_features: int, out_features: int, *, width: int = 256, layers: int = 1,
                input_scale: float = 32.0, injection: bool = True, **options: Any) -> nn.Module:
    """Build the INR called ``name``.

    Arguments:
        name: one of :data:`MODELS`.
        in_features, out_features: coordinate dimension (2 image, 1 audio, 3 video) and channels.
        width, layers: ``D`` and ``L`` ("1L-256D" default).
        input_scale: filter frequency scale (ignored by the classic SIREN, which uses ``omega_0``).
        injection: ``siren`` only: ``False`` gives the classic SIREN without input injection.
        **options: implicit models: the options of :class:`ImplicitINR` (solver, neumann_terms, amortize, ...);
            classic SIREN: ``omega_0``.

    Raises:
        UnknownNameError: unknown model name (the message lists the known ones).
        ValueError: an option that the model does not take, or a bad size.

    Example:
        >>> m = build_model("imfn-gabor", 2, 3, width=32)
        >>> m.name, m.implicit
        ('imfn-gabor', True)
    """
    if name not in MODELS:
        raise UnknownNameError("model", name, MODELS)
    family, implicit, _ = MODELS[name]
    if implicit:
        try:
            return ImplicitINR(family, in_features, out_features, width=width, layers=layers,
                               input_scale=input_scale, **options)
        except TypeError as e:
            raise ValueError(f"bad option for model {name!r}: {e}") from None
    if name == "siren" and not injection:
        return Siren(in_features, out_features, width=width, layers=layers, **options)
    if options:
        raise ValueError(f"model {name!r} takes no options {sorted(options)}")
    return ExplicitINR(family, in_features, out_features, width=width, layers=layers, input_scale=input_scale)


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its :meth:`config` (as stored in a checkpoint)."""
    cfg = dict(config)
    name = cfg.pop("model")
    in_f, out_f = cfg.pop("in_features"), cfg.pop("out_features")
    if name not in MODELS:  # a plugin's model: rebuilt through the registry from its own config()
        from deq_core import registry

        return registry.get_model(name, in_features=in_f, out_features=out_f, **cfg)
    injection = cfg.pop("injection", True)
    if name == "siren" and not injection:
        return Siren(in_f, out_f, width=cfg["width"], layers=cfg["layers"], omega_0=cfg["omega_0"])
    cfg.pop("solver", None)   # the forward solver is a run-time choice (fixed-point by default)
    return build_model(name, in_f, out_f, injection=injection, **cfg)
