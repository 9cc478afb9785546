"""Backends: `reference` (a sequential loop generated from the IR, fp64-capable) and `mixing`
(the materialised token-mixing matrix, a second, parallel oracle)."""
