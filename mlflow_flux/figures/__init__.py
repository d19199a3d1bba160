"""A watched run's figures: what they draw, gathered snapshot by snapshot (:mod:`.data`, numpy only, what
``watch()`` imports), and the drawing at ``close()`` (:mod:`.draw`, matplotlib). The write side: nothing here reads a
trace back."""
