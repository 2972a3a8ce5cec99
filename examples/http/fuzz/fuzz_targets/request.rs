//! Fuzz the HTTP request path: parser, body framing and routing, fed whole
//! and in pieces (see `corelane_http::fuzzing::check`).
//!
//! ```text
//! cd examples/http/fuzz && cargo +nightly fuzz run request corpus/request -- -max_total_time=600
//! ```
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corelane_http::fuzzing::check(data));
