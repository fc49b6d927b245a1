"""Ready-made strategies, one plain Python file each, loadable by name.

Each file defines ``strategy(**args) -> Strategy``. Arguments may be open knobs
(:class:`condensa.Range` / :class:`condensa.Choice`), so a scheme doubles as a search space.
Installed as the package ``condensa.schemes``.
"""
