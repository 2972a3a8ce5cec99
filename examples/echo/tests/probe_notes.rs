//! Every documented USDT probe is compiled into the server binary, with the
//! documented number of arguments, each a 64-bit value. Reads the ELF
//! `.note.stapsdt` section directly (no external tool).

use std::collections::BTreeMap;

use object::{Object, ObjectSection};

const BIN: &str = env!("CARGO_BIN_EXE_corelane-echo");

/// The probes of DESIGN.md and the README, with their argument counts.
const DOCUMENTED: [(&str, usize); 12] = [
    ("accept", 3),
    ("connect", 3),
    ("connected", 3),
    ("read", 4),
    ("write", 4),
    ("close", 4),
    ("gc_start", 2),
    ("gc_done", 4),
    ("steer", 2),
    ("panic", 2),
    ("tls_handshake", 4),
    ("tls_error", 3),
];

/// Probes only a build with the `tls` feature has.
const TLS_ONLY: [&str; 2] = ["tls_handshake", "tls_error"];

/// (provider, name, argument spec) of every SDT note.
fn sdt_notes(elf: &[u8]) -> Vec<(String, String, String)> {
    let file = object::File::parse(elf).expect("an ELF file");
    let section = file
        .section_by_name(".note.stapsdt")
        .expect("a .note.stapsdt section");
    let data = section.data().unwrap();
    let mut notes = Vec::new();
    let mut at = 0;
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap()) as usize;
    while at + 12 <= data.len() {
        let (namesz, descsz, kind) = (u32_at(at), u32_at(at + 4), u32_at(at + 8));
        let name_start = at + 12;
        let desc_start = name_start + namesz.div_ceil(4) * 4;
        let next = desc_start + descsz.div_ceil(4) * 4;
        assert_eq!(&data[name_start..name_start + namesz], b"stapsdt\0");
        assert_eq!(kind, 3, "NT_STAPSDT");
        // Three addresses (pc, base, semaphore), then three C strings.
        let strings = &data[desc_start + 24..desc_start + descsz];
        let mut parts = strings
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned());
        let provider = parts.next().unwrap();
        let name = parts.next().unwrap();
        let args = parts.next().unwrap_or_default();
        notes.push((provider, name, args));
        at = next;
    }
    notes
}

#[test]
fn every_documented_probe_is_in_the_binary_with_its_arguments() {
    let elf = std::fs::read(BIN).unwrap();
    let notes = sdt_notes(&elf);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (provider, name, args) in &notes {
        assert_eq!(provider, "corelane", "unexpected provider on probe {name}");
        let Some(&(doc_name, count)) = DOCUMENTED.iter().find(|(n, _)| n == name) else {
            panic!("probe {name} is not documented");
        };
        let specs: Vec<&str> = args.split_whitespace().collect();
        assert_eq!(specs.len(), count, "probe {name} has arguments `{args}`");
        for spec in specs {
            let size = spec.split('@').next().unwrap();
            assert!(
                size == "8" || size == "-8",
                "probe {name}: argument `{spec}` is not 64-bit"
            );
        }
        *seen.entry(doc_name).or_default() += 1;
    }
    for (name, _) in DOCUMENTED {
        if TLS_ONLY.contains(&name) {
            continue;
        }
        assert!(
            seen.contains_key(name),
            "probe {name} is missing from {BIN}; found {seen:?}"
        );
    }
}
