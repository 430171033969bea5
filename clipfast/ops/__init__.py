"""Ops: one file per op, each with a PyTorch reference (``<op>_ref``) and a public ``<op>()`` that
dispatches to the fastest backend available (see ``clipfast.backend``)."""
