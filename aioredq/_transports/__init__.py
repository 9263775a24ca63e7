"""The only code that speaks Redis: one module per transport, plus the key layout."""
