"""awqd: a per-node daemon that serves 4-bit AWQ models and picks AWQ kernels per GPU by measurement."""

__version__ = "0.1.0"
