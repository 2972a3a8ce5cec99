//! Replays the fuzzer's seed corpus (and any crash reproducers saved next to
//! it) through the fuzz property, so CI checks it without a fuzzer.

#[test]
fn the_seed_corpus_holds_the_fuzz_property() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/request");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        corelane_http::fuzzing::check(&data);
        n += 1;
    }
    assert!(n >= 10, "the seed corpus went missing ({n} files)");
}
