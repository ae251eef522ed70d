"""CI integration: ``gradcheck-service ci`` checks a repository's configured models, writes JUnit XML and a Markdown
summary, and compares each model with a baseline (a saved report, or the latest run on the base branch)."""
