"""softlab.widgets: the notebook layer (ipywidgets + plotly FigureWidget) over the softlab library.

Installed as ``softlab.widgets`` from the top-level ``widgets/`` folder. The library (``softlab`` proper) never
imports this package, so ``import softlab`` works without ipywidgets.
"""
