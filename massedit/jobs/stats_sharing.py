"""``massedit stats push|pull --repo USER/NAME``: share the statistics cache through a hub
dataset repository (docs/design.md §6, "Shared statistics"; massedit.stats.sharing)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from massedit.data.locations import cache_root
from massedit.hub import check_repo_id
from massedit.jobs.stats import parse_layers
from massedit.stats.sharing import PullReport, pull_stats, push_stats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShareOptions:
    action: str  # "push" or "pull"
    repo: str
    model: str | None = None  # only this model's entries (None: all)
    layers: str | None = None  # only these layers' sites (needs model)
    cache_dir: str | None = None
    private: bool = True


def _selection(opts: ShareOptions) -> tuple[str | None, list[str] | None]:
    """The model identity and site names asked for (the model is loaded to know them: a local
    model is identified by a hash of its config and embeddings)."""
    if opts.model is None:
        if opts.layers:
            raise ValueError("--layers needs --model (sites are named by the model)")
        return None, None
    from massedit.models.adapters import get_adapter
    from massedit.models.loading import load_model
    from massedit.stats.cache import model_identity

    model, _ = load_model(opts.model)
    sites = None
    if opts.layers:
        adapter = get_adapter(model)
        sites = [adapter.site_name(layer) for layer in parse_layers(opts.layers)]
    return model_identity(model), sites


def run_share(opts: ShareOptions, console) -> list[str] | PullReport:
    if opts.action not in ("push", "pull"):
        raise ValueError(f"stats {opts.action!r}: the actions are push and pull")
    check_repo_id(opts.repo)  # a malformed id fails before the model is loaded
    root = cache_root(opts.cache_dir)
    model_id, sites = _selection(opts)
    if opts.action == "push":
        names = push_stats(root, opts.repo, model_id=model_id, sites=sites,
                           private=opts.private)
        console.print(f"pushed {len(names)} statistics file(s) to the dataset {opts.repo}")
        return names
    report = pull_stats(root, opts.repo, model_id=model_id, sites=sites)
    for problem in report.refused:
        console.print(f"[red]refused[/red] {problem}", highlight=False)
    if not report.installed and not report.refused:
        others = (f"; it holds entries for {', '.join(sorted(report.other_models))}"
                  if report.other_models else "")
        raise ValueError(f"no statistics in {opts.repo} match this model and these layers "
                         f"({report.available} entries{others})" if model_id else
                         f"{opts.repo} holds no statistics")
    console.print(f"pulled {len(report.installed)} statistics file(s) from {opts.repo} into "
                  f"{root / 'stats'}" + (f"; {len(report.refused)} refused"
                                          if report.refused else ""))
    if report.refused:
        raise ValueError(f"{len(report.refused)} entr{'y' if len(report.refused) == 1 else 'ies'}"
                         f" of {opts.repo} failed verification and were not used")
    return report
