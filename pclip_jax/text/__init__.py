"""Text for flows and classes: prompts and flow facts (`prompts`), text features embedded once per distinct text
and cached (`feature_cache`), server names as static text-embedding vectors (`name_features`). May import
`plumbing`, `graph`, `data` and `models`.
"""
