"""One construct per concern; every construct takes keyword-only props and never reads context or env."""
