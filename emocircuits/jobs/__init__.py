"""One typed, validated config per job -> method calls -> one run directory."""
