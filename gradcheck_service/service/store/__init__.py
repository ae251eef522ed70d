"""The service's SQL store: typed models, sessions, scoped queries, run lifecycle and migrations."""
