"""Model names -> constructors: ``isiren``, ``imfn-fourier``, ``imfn-gabor`` (implicit), ``siren``, ``mfn-fourier``,
``mfn-gabor`` (explicit), each also under its sized names for the paper's image sizes ``1L-256D``, ``1L-512D``,
``4L-256D`` (``isiren-1l-512d``, ``mfn-gabor-4l-256d``, ...: 18 models)."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from deq_core import UnknownNameError

from ._models import ExplicitINR, ImplicitINR, Siren

__all__ = ["MODELS", "SIZES", "SIZED_MODELS", "parse_arch", "is_implicit", "build_model", "model_from_config"]

MODELS: dict[str, tuple[str, bool, str]] = {
    "isiren": ("siren", True, "iSIREN: z = sin(W(z + sin(Omega0 x + phi0)) + b + Omega1 x + phi1), spectral norm 0.97"),
    "imfn-fourier": ("fourier", True, "Fourier iMFN: z = g1(x) * (W(z + g0(x)) + b), sine filters"),
    "imfn-gabor": ("gabor", True, "Gabor iMFN: z = g1(x) * (W(z + g0(x)) + b), Gabor filters"),
    "siren": ("siren", False, "explicit SIREN (input injection by default; injection=False: classic omega0=30)"),
    "mfn-fourier": ("fourier", False, "explicit Fourier MFN with layers+1 filters"),
    "mfn-gabor": ("gabor", False, "explicit Gabor MFN with layers+1 filters"),
}

#: The (Implicit)^2 image / audio sizes ``L`` sub-layers x width ``D``, implicit and explicit (papers.md 2.2).
SIZES: dict[str, tuple[int, int]] = {"1L-256D": (1, 256), "1L-512D": (1, 512), "4L-256D": (4, 256)}

#: ``"isiren-1l-512d" -> ("isiren", 1, 512)``: every model of :data:`MODELS` at every size of :data:`SIZES`.
SIZED_MODELS: dict[str, tuple[str, int, int]] = {
    f"{base}-{arch.lower()}": (base, *SIZES[arch]) for base in MODELS for arch in SIZES
}

_ARCH = re.compile(r"^\s*(\d+)\s*l\s*-\s*(\d+)\s*d\s*$", re.IGNORECASE)


def parse_arch(arch: str) -> tuple[int, int]:
    """``"1L-512D" -> (1, 512)`` (``layers``, ``width``); any ``<L>L-<D>D`` with ``L, D >= 1``, case-insensitive.

    Example:
        >>> parse_arch("4L-256D"), parse_arch("1l-512d")
        ((4, 256), (1, 512))
    """
    m = _ARCH.match(arch) if isinstance(arch, str) else None
    if m is None or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"arch must look like '1L-512D' (layers L >= 1, width D >= 1), got {arch!r}")
    return int(m.group(1)), int(m.group(2))


def is_implicit(name: str) -> bool:
    """Whether the model called ``name`` (plain or sized) is an implicit (DEQ) model."""
    base = SIZED_MODELS[name][0] if name in SIZED_MODELS else name
    if base not in MODELS:
        raise UnknownNameError("model", name, {**MODELS, **SIZED_MODELS})
    return MODELS[base][1]


def _resolve_size(name: str, width: int | None, layers: int | None, arch: str | None) -> tuple[str, int, int]:
    fixed: list[tuple[str, int, int]] = []
    if name in SIZED_MODELS:
        name, l_, d_ = SIZED_MODELS[name]
        fixed.append((f"model name {name}-{l_}l-{d_}d", l_, d_))
    if arch is not None:
        fixed.append((f"arch={arch!r}", *parse_arch(arch)))
    if not fixed:
        return name, 256 if width is None else width, 1 if layers is None else layers
    what, l_, d_ = fixed[0]
    for other, l2, d2 in fixed[1:]:
        if (l2, d2) != (l_, d_):
            raise ValueError(f"{other} ({l2}L-{d2}D) contradicts the {what} ({l_}L-{d_}D)")
    if width is not None and width != d_:
        raise ValueError(f"width={width} contradicts the {what} (width {d_})")
    if layers is not None and layers != l_:
        raise ValueError(f"layers={layers} contradicts the {what} ({l_} sub-layers)")
    return name, d_, l_


def build_model(name: str, in_features: int, out_features: int, *, width: int | None = None,
                layers: int | None = None, arch: str | None = None, input_scale: float = 32.0,
                injection: bool = True, **options: Any) -> nn.Module:
    """Build the INR called ``name``.

    Arguments:
        name: one of :data:`MODELS`, or a sized name of :data:`SIZED_MODELS` (``isiren-1l-512d``), which fixes
            ``layers`` and ``width``.
        in_features, out_features: coordinate dimension (2 image, 1 audio, 3 video) and channels.
        width, layers: ``D`` and ``L`` (default "1L-256D").
        arch: ``"1L-512D"`` etc. instead of ``layers`` / ``width`` (:func:`parse_arch`).
        input_scale: filter frequency scale (ignored by the classic SIREN, which uses ``omega_0``).
        injection: ``siren`` only: ``False`` gives the classic SIREN without input injection.
        **options: implicit models: the options of :class:`ImplicitINR` (solver, neumann_terms, amortize, ...);
            classic SIREN: ``omega_0``.

    Raises:
        UnknownNameError: unknown model name (the message lists the known ones).
        ValueError: an option that the model does not take, a bad size, or a size that contradicts a sized name.

    Example:
        >>> m = build_model("imfn-gabor", 2, 3, width=32)
        >>> m.name, m.implicit
        ('imfn-gabor', True)
        >>> m = build_model("siren-1l-512d", 2, 1)
        >>> m.config()["layers"], m.config()["width"]
        (1, 512)
    """
    if name not in MODELS and name not in SIZED_MODELS:
        raise UnknownNameError("model", name, {**MODELS, **SIZED_MODELS})
    name, width, layers = _resolve_size(name, width, layers, arch)
    family, implicit, _ = MODELS[name]
    if not injection and name != "siren":
        raise ValueError(f"injection=False is for model 'siren' only (the classic SIREN); model {name!r} "
                         "always injects its input")
    if implicit:
        try:
            return ImplicitINR(family, in_features, out_features, width=width, layers=layers,
                               input_scale=input_scale, **options)
        except TypeError as e:
            raise ValueError(f"bad option for model {name!r}: {e}") from None
    if name == "siren" and not injection:
        try:
            return Siren(in_features, out_features, width=width, layers=layers, **options)
        except TypeError as e:
            raise ValueError(f"bad option for model 'siren' with injection=False (it takes only omega_0): "
                             f"{e}") from None
    spectral_norm = options.pop("spectral_norm", None)
    if options:
        raise ValueError(f"model {name!r} takes no options {sorted(options)} (only spectral_norm)")
    return ExplicitINR(family, in_features, out_features, width=width, layers=layers, input_scale=input_scale,
                       spectral_norm=spectral_norm)


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its :meth:`config` (as stored in a checkpoint), with the forward solver it was
    trained with (name and hyperparameters, resolved through :mod:`deq_core.registry`).

    Example:
        >>> from deq_core.registry import get_solver
        >>> m = build_model("isiren", 2, 1, width=8, solver=get_solver("fixed-point", damping=0.7))
        >>> m2 = model_from_config(m.config())
        >>> m2.deq.solver.name, m2.deq.solver.damping
        ('fixed-point', 0.7)
    """
    missing = [k for k in ("model", "in_features", "out_features") if not isinstance(config, dict) or k not in config]
    if missing:
        from deq_core import DeqInputError

        raise DeqInputError(f"a model config needs 'model', 'in_features' and 'out_features' (as a model's "
                            f"config() writes them); got {config!r}, without {', '.join(missing)}")
    cfg = dict(config)
    name = cfg.pop("model")
    in_f, out_f = cfg.pop("in_features"), cfg.pop("out_features")
    if name not in MODELS:  # a plugin's model: rebuilt through the registry from its own config()
        from deq_core import registry

        return registry.get_model(name, in_features=in_f, out_features=out_f, **cfg)
    injection = cfg.pop("injection", True)
    if name == "siren" and not injection:
        return Siren(in_f, out_f, width=cfg["width"], layers=cfg["layers"], omega_0=cfg["omega_0"])
    solver, solver_options = cfg.pop("solver", None), cfg.pop("solver_options", None) or {}
    if solver is not None:   # checkpoints before solver_options was stored: the name with its defaults
        from deq_core import registry

        cfg["solver"] = registry.get_solver(solver, **solver_options)
    return build_model(name, in_f, out_f, injection=injection, **cfg)
