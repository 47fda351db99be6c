"""Hand-written fake CRM servers for tests: real HTTP, in-memory records, recorded calls."""
