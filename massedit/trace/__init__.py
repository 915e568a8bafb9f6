"""Causal tracing (ROME's locating experiment) and edit-layer suggestions (docs/design.md §8).

>>> from massedit.trace import plot_trace, suggest_layers, trace_fact
>>> trace = trace_fact(model, tok, "The Eiffel Tower is in", "Eiffel Tower")  # doctest: +SKIP
>>> plot_trace(trace, "eiffel.png")                                             # doctest: +SKIP
>>> suggest_layers(model, tok, [("Beats Music is owned by", "Beats Music")])    # doctest: +SKIP
"""

from massedit.trace.average import CATEGORIES, AverageTrace, KindAverage, average_traces
from massedit.trace.fact import trace_fact
from massedit.trace.known import load_known, predicted_facts
from massedit.trace.noise import embedding_std, parse_noise
from massedit.trace.plots import plot_average, plot_trace
from massedit.trace.restore import CorruptedRunner, Restoration
from massedit.trace.result import KINDS, FactTrace, KindTrace, save_trace
from massedit.trace.suggest import LayerSuggestion, suggest_from_traces, suggest_layers

__all__ = [
    "CATEGORIES",
    "KINDS",
    "AverageTrace",
    "CorruptedRunner",
    "FactTrace",
    "KindAverage",
    "KindTrace",
    "LayerSuggestion",
    "Restoration",
    "average_traces",
    "embedding_std",
    "load_known",
    "parse_noise",
    "plot_average",
    "plot_trace",
    "predicted_facts",
    "save_trace",
    "suggest_from_traces",
    "suggest_layers",
    "trace_fact",
]
