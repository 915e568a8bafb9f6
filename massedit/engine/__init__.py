"""The engine parts every editor shares: hooks, tokens, keys, context prefixes, requests,
the per-layer problem and its fp64 algebra, hyper-parameters, and the patch (docs/design.md §2)."""
