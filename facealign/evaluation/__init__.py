"""Evaluation: NME and CED (``metrics``), the one scoring path (``scoring``), the report of
``facealign-eval`` (``report``)."""
