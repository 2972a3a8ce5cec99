//! Benchmarks and load tools for corelane (see the binaries in `src/bin`).
