"""The fake clock now lives in ``support``; this name stays only for the importers not yet moved to it."""

from __future__ import annotations

from support import Clock

__all__ = ["Clock"]
