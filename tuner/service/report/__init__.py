"""The experiment report: verdicts (the statistics of the claims) and render (markdown, plots,
files)."""
