"""The training configs that ship with ols (data only): see ``ols.presets``."""
