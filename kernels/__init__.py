"""Triton kernels, one module per op (installed as ``clipfast.kernels``).

Each module defines ``_<op>_fwd_kernel`` / ``_<op>_bwd_kernel``, their launchers ``<op>_fwd`` /
``<op>_bwd`` and ``aot_specs()`` (every config the launchers can choose; compiled ahead of time for
sm_80/sm_90 by the test suite). Modules here import torch and triton only.
"""
