"""Loading USB (the `semilearn` package, microsoft/Semi-supervised-learning) for the benchmarks that compare with it.

semilearn is a dev-only dependency, installed beside the project rather than into it:

    pip install --no-deps --target /work/usb_site semilearn==0.3.2

`use_site` puts such a folder on `sys.path`. `install_logger_standins` lets `import semilearn` succeed where `aim` or
`wandb` is missing: semilearn 0.3.2 imports both at import time (semilearn/core/hooks/aim.py and wandb.py), only for
the AimHook and WandBHook, which a run enables with `use_aim` / `use_wandb` and the benchmarks never do.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

LOGGER_MODULES = ("aim", "wandb")
INSTALL_HINT = "pip install --no-deps --target {site} semilearn==0.3.2"


def use_site(site: str | Path | None) -> Path | None:
    """Put `site` (a `pip install --target` folder holding semilearn) first on sys.path; None leaves sys.path alone.
    Exits with the install command when the folder holds no semilearn."""
    if not site:
        return None
    site = Path(site).resolve()
    if not (site / "semilearn").is_dir():
        sys.exit(f"semilearn not found under {site}: {INSTALL_HINT.format(site=site)}")
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    return site


def semilearn_available(site: str | Path | None = None) -> bool:
    """Whether semilearn can be found (under `site` when given, else on sys.path), without importing it."""
    if site:
        return (Path(site) / "semilearn").is_dir()
    return importlib.util.find_spec("semilearn") is not None


def _standin(name: str) -> types.ModuleType:
    mod = types.ModuleType(name, f"Empty stand-in for {name} (benchmarks/_usb.py): USB's {name} logger is not used.")
    # a spec, so that importlib.util.find_spec(name) answers instead of raising (accelerate's is_*_available call
    # it); no distribution metadata, so those checks still say the package is not installed
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, origin="stand-in")
    mod.__stand_in__ = True

    def __getattr__(attr: str):  # a hook that was enabled after all fails with a clear message
        raise AttributeError(f"{name} is an empty stand-in (benchmarks/_usb.py): USB's {name} logger cannot run")

    mod.__getattr__ = __getattr__
    return mod


def install_logger_standins(names: tuple[str, ...] = LOGGER_MODULES) -> list[str]:
    """Import each of `names`; where one is missing (or fails to import), put an empty module in sys.modules in its
    place. A module that imports is left as it is. Returns the names that got a stand-in."""
    stood = []
    for name in names:
        if sys.modules.get(name) is not None:  # imported already (None marks a blocked import)
            continue
        try:
            importlib.import_module(name)
        except Exception:  # missing, or installed without its own dependencies: either way semilearn cannot import it
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]  # leftovers of a half-done import
            sys.modules[name] = _standin(name)
            stood.append(name)
    return stood


def standin_message(stood: list[str]) -> str | None:
    """The one line the benchmarks print when stand-ins were installed."""
    if not stood:
        return None
    plural = "s" if len(stood) > 1 else ""
    return f"{' / '.join(stood)} missing: empty stand-in{plural} installed, USB's loggers are not used"
