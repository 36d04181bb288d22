"""The forecastd model zoo: baselines, River adapters, PyTorch networks, the registry.

Everything the processing task needs goes through :mod:`models.registry`
(``build(kind, params, context)``); :mod:`models.base` holds the contract and
:mod:`models.checks` the conformance suite every registered kind passes.
"""
