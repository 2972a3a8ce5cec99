//! The steering program's choice, run in userspace on a model of the
//! workers: the same `corelane_steering_common::pick` the kernel runs per
//! SYN, per policy, for 4 and 64 workers.
//!
//! ```text
//! cargo bench -p corelane-benches --bench steering
//! ```
//!
//! The model's loads follow the choices (each pick adds a connection, and a
//! random tenth of the connections close), so `least-loaded` scans a
//! realistic, changing table rather than a constant one.

use std::hint::black_box;

use corelane_steering_common::{pick, Input, Policy, Workers, NO_WORKER};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

struct Model {
    load: Vec<u32>,
    draining: Vec<bool>,
}

impl Workers for Model {
    #[inline]
    fn eligible(&self, i: u32) -> bool {
        !self.draining[i as usize]
    }
    #[inline]
    fn load(&self, i: u32) -> u32 {
        self.load[i as usize]
    }
}

/// xorshift: the flow hashes of the model's connections.
fn next(state: &mut u32) -> u32 {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    *state
}

fn policies(c: &mut Criterion) {
    const BATCH: u64 = 1000;
    for workers in [4u32, 64] {
        let mut g = c.benchmark_group(format!("steer_{workers}_workers"));
        g.throughput(Throughput::Elements(BATCH));
        for policy in Policy::ALL {
            g.bench_function(policy.as_str(), |b| {
                let mut m = Model {
                    load: vec![0; workers as usize],
                    draining: vec![false; workers as usize],
                };
                // One worker draining: the probe path is part of the cost.
                m.draining[1] = true;
                let mut rng = 0x9e37_79b9u32;
                let mut turn = 0u32;
                b.iter(|| {
                    for _ in 0..BATCH {
                        let hash = next(&mut rng);
                        let input = Input {
                            policy,
                            workers,
                            hash,
                            cpu_worker: if hash & 1 == 0 {
                                hash % workers
                            } else {
                                NO_WORKER
                            },
                            turn,
                        };
                        turn = turn.wrapping_add(1);
                        let k = pick(black_box(&input), &m, |_| true).unwrap();
                        m.load[k as usize] += 1;
                        if hash.is_multiple_of(10) {
                            let j = (hash >> 8) % workers;
                            m.load[j as usize] = m.load[j as usize].saturating_sub(1);
                        }
                    }
                });
                // Every policy must have spread the load (and never used the
                // draining worker).
                assert_eq!(m.load[1], 0);
            });
        }
        g.finish();
    }
}

criterion_group!(benches, policies);
criterion_main!(benches);
