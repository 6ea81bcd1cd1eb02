"""The sweep specs that ship with ols (data only): see ``ols.presets``."""
