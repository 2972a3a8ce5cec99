//! The request path as the fuzzer drives it: bytes fed to the handler the
//! way the runtime feeds them, whole and in pieces.
//!
//! Shared by the cargo-fuzz target (`examples/http/fuzz`) and by a regular
//! test that replays the seed corpus, so CI checks the same properties.

use corelane::{Action, Input, Output, WorkerInfo};

use crate::{Http, HttpOptions};

/// Feeds `pieces` one after another to a fresh handler, keeping unconsumed
/// bytes as the runtime does, until the handler asks to close. Returns the
/// bytes it wrote and whether it closed.
pub fn feed(pieces: &[&[u8]], opts: HttpOptions) -> (Vec<u8>, bool) {
    feed_with(pieces, opts, false)
}

/// [`feed`], with heads scanned the baseline way (16 bytes at a time) if
/// `baseline`, else as the CPU allows (32 with AVX2).
fn feed_with(pieces: &[&[u8]], mut opts: HttpOptions, baseline: bool) -> (Vec<u8>, bool) {
    opts.wide_scan = !baseline;
    let info = WorkerInfo::detached(0, 1);
    let mut http = Http::new(
        &info,
        opts,
        std::sync::Arc::new(crate::RequestCounters::new(1)),
    );
    // A fixed clock: both feeds must format the same Date.
    http.tick(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
    let mut conn = http.on_accept_detached();
    let mut buffered: Vec<u8> = Vec::new();
    let mut out = Output::default();
    let mut written = Vec::new();
    for piece in pieces {
        buffered.extend_from_slice(piece);
        let mut input = Input::new(&buffered, false, false);
        let action = http.serve(&mut conn, &mut input, &mut out);
        let consumed = input.consumed();
        assert!(consumed <= buffered.len());
        buffered.drain(..consumed);
        written.extend_from_slice(&out.to_vec());
        out.clear();
        if action == Action::Close {
            return (written, true);
        }
    }
    (written, false)
}

/// Drops interim `100 Continue` responses (sent or not depending on how the
/// bytes were split).
fn without_interim(mut out: &[u8]) -> Vec<u8> {
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut kept = Vec::with_capacity(out.len());
    while !out.is_empty() {
        if let Some(rest) = out.strip_prefix(CONTINUE) {
            out = rest;
        } else {
            kept.push(out[0]);
            out = &out[1..];
        }
    }
    kept
}

/// The fuzz property. The first byte chooses how the rest is split; the rest
/// is fed whole and in pieces. Nothing may panic, every response must be a
/// well-formed HTTP/1.1 status line, and neither splitting nor how wide the
/// head scan is must change the responses (interim 100s aside) or whether
/// the connection closes.
pub fn check(data: &[u8]) {
    let Some((&seed, data)) = data.split_first() else {
        return;
    };
    let mut opts = HttpOptions::default();
    opts.limits.max_head = 2048;
    opts.limits.max_body = 4096;
    let (whole, whole_closed) = feed(&[data], opts);
    // The baseline scan answers the same as the wider one the CPU allows.
    let baseline = feed_with(&[data], opts, true);
    assert!(
        baseline == (whole.clone(), whole_closed),
        "the baseline scan answers differently:\nbaseline (closed {}): {:?}\nwide (closed {whole_closed}): {:?}",
        baseline.1,
        String::from_utf8_lossy(&baseline.0),
        String::from_utf8_lossy(&whole)
    );
    let step = usize::from(seed % 17) + 1;
    let pieces: Vec<&[u8]> = data.chunks(step).collect();
    let (split, split_closed) = feed(&pieces, opts);
    assert!(
        whole.is_empty() || whole.starts_with(b"HTTP/1.1 "),
        "malformed response"
    );
    let (whole, split) = (without_interim(&whole), without_interim(&split));
    assert!(
        whole == split && whole_closed == split_closed,
        "responses depend on the split (step {step}):\nwhole (closed {whole_closed}): {:?}\nsplit (closed {split_closed}): {:?}",
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&split)
    );
}
