"""Triton kernels, one module per op (installed as ``clipfast.kernels``).

Each module defines ``_<op>_fwd_kernel`` / ``_<op>_bwd_kernel``, their launchers ``<op>_fwd`` /
``<op>_bwd`` and ``aot_specs()`` (every binary the launchers can make the JIT build; compiled ahead of
time for sm_80/sm_90 by the test suite), derived from ``aot_launches()``, representative launcher calls
on meta tensors, through ``_aot.specs_from_launches`` (the JIT's own specialisation, see
``_aot``/``_aot_capture``). Modules here import torch and triton only.
"""
