//! The policy choice as the kernel program runs it, on a model of the
//! workers.

use corelane_steering_common::{
    pick, preferred, Input, Policy, WorkerSlot, Workers, MAX_WORKERS, NO_WORKER, PROBE_LIMIT,
    STALL_PENALTY,
};

#[derive(Default)]
struct Model {
    draining: Vec<bool>,
    load: Vec<u32>,
}

impl Model {
    fn idle(n: usize) -> Model {
        Model {
            draining: vec![false; n],
            load: vec![0; n],
        }
    }
}

impl Workers for Model {
    fn eligible(&self, i: u32) -> bool {
        !self.draining[i as usize]
    }
    fn load(&self, i: u32) -> u32 {
        self.load[i as usize]
    }
}

fn input(policy: Policy, workers: u32) -> Input {
    Input {
        policy,
        workers,
        hash: 0,
        cpu_worker: NO_WORKER,
        turn: 0,
    }
}

fn pick_any(i: &Input, m: &Model) -> Option<u32> {
    pick(i, m, |_| true)
}

#[test]
fn round_robin_deals_in_turn_and_skips_draining_workers() {
    let mut m = Model::idle(4);
    let mut counts = [0; 4];
    for turn in 0..1001 {
        let i = Input {
            turn,
            ..input(Policy::RoundRobin, 4)
        };
        counts[pick_any(&i, &m).unwrap() as usize] += 1;
    }
    assert_eq!(counts, [251, 250, 250, 250]);
    m.draining[2] = true;
    let i = Input {
        turn: 2,
        ..input(Policy::RoundRobin, 4)
    };
    assert_eq!(
        pick_any(&i, &m),
        Some(3),
        "a draining worker's turn goes to the next"
    );
}

#[test]
fn hash_is_the_flow_hash_modulo_the_workers() {
    let m = Model::idle(4);
    for hash in [0u32, 1, 7, 0xdead_beef, u32::MAX] {
        let i = Input {
            hash,
            ..input(Policy::Hash, 4)
        };
        assert_eq!(pick_any(&i, &m), Some(hash % 4));
    }
}

#[test]
fn cpu_uses_the_table_and_hashes_unmapped_cpus() {
    let m = Model::idle(3);
    let mapped = Input {
        cpu_worker: 2,
        hash: 4,
        ..input(Policy::Cpu, 3)
    };
    assert_eq!(pick_any(&mapped, &m), Some(2));
    let unmapped = Input {
        cpu_worker: NO_WORKER,
        hash: 4,
        ..input(Policy::Cpu, 3)
    };
    assert_eq!(pick_any(&unmapped, &m), Some(1));
}

#[test]
fn least_loaded_takes_the_lighter_of_two_and_rotates_ties() {
    let mut m = Model::idle(4);
    let at = |turn, hash| Input {
        turn,
        hash,
        ..input(Policy::LeastLoaded, 4)
    };
    // Idle: ties go to the rotating candidate, so the group fills in turn.
    for turn in 0..8 {
        assert_eq!(pick_any(&at(turn, turn * 7), &m), Some(turn % 4));
    }
    // The candidates are distinct, so the heaviest worker never wins
    // against a lighter one, whatever the turn and the hash.
    m.load = vec![100, 0, 0, 0];
    for turn in 0..4 {
        for hash in 0..12 {
            assert_ne!(pick_any(&at(turn, hash), &m), Some(0));
        }
    }
    // The second candidate is the hash's pick among the others.
    m.load = vec![5, 3, 9, 3];
    assert_eq!(pick_any(&at(2, 0), &m), Some(3), "9 vs 3");
    assert_eq!(pick_any(&at(1, 0), &m), Some(1), "3 vs 9: the rotating one");
    // A draining candidate gives way to the other.
    m.draining[2] = true;
    assert_eq!(
        pick_any(&at(2, 1), &m),
        Some(0),
        "candidates 2 (draining) and 0"
    );
    // One worker: no second candidate.
    assert_eq!(
        pick_any(&input(Policy::LeastLoaded, 1), &Model::idle(1)),
        Some(0)
    );
}

#[test]
fn a_stalled_worker_is_avoided_for_a_bounded_number_of_connections() {
    let now = 1_000_000_000;
    let stall = 10_000_000;
    let busy = WorkerSlot {
        conns: 1,
        busy_since_ns: now - 50_000_000,
        ..WorkerSlot::default()
    };
    // 50 ms stuck: 47 units of 2^20 ns, graded up to STALL_PENALTY - 1.
    assert_eq!(busy.load(now, stall), 1 + STALL_PENALTY + 31);
    let brief_stall = WorkerSlot {
        busy_since_ns: now - 20_000_000,
        ..busy
    };
    assert_eq!(brief_stall.load(now, stall), 1 + STALL_PENALTY + 19);
    assert_eq!(busy.load(now, 0), 1, "0 disables the check");
    let short = WorkerSlot {
        busy_since_ns: now - 1_000_000,
        ..busy
    };
    assert_eq!(short.load(now, stall), 1, "a short turn is not a stall");
    let waiting = WorkerSlot {
        pending: 3,
        busy_since_ns: 0,
        ..busy
    };
    assert_eq!(waiting.load(now, stall), 4, "pending connections count");
    let lately = WorkerSlot {
        recent_turn_ns: 50_000_000,
        ..waiting
    };
    assert_eq!(
        lately.load(now, stall),
        4 + STALL_PENALTY + 31,
        "a recent long stretch without progress counts between stalls"
    );

    // Avoided while the other holds fewer than STALL_PENALTY (+ its grade)
    // more connections.
    let m = Model {
        draining: vec![false; 2],
        load: vec![1 + STALL_PENALTY, 20],
    };
    assert_eq!(pick_any(&input(Policy::LeastLoaded, 2), &m), Some(1));
    // The diversion is bounded: once the others hold STALL_PENALTY + 31
    // more, the stalled worker is picked again.
    let m = Model {
        draining: vec![false; 2],
        load: vec![busy.load(now, stall), 1 + STALL_PENALTY + 32],
    };
    assert_eq!(pick_any(&input(Policy::LeastLoaded, 2), &m), Some(0));
    // Both stalled with as many connections: the one stalled longer loses.
    let long = WorkerSlot {
        conns: 30,
        recent_turn_ns: 50_000_000,
        ..WorkerSlot::default()
    };
    let brief = WorkerSlot {
        conns: 30,
        recent_turn_ns: 12_000_000,
        ..WorkerSlot::default()
    };
    assert!(long.load(now, stall) > brief.load(now, stall));
}

#[test]
fn a_failed_selection_moves_on_and_gives_up_after_the_probe_limit() {
    let m = Model::idle(4);
    let i = input(Policy::Hash, 4);
    // Listener 0 is gone (closed): the next one takes the connection.
    assert_eq!(pick(&i, &m, |k| k != 0), Some(1));
    assert_eq!(pick(&i, &m, |_| false), None);
    let big = Model::idle(MAX_WORKERS as usize);
    let mut tried = 0;
    let r = pick(&input(Policy::Hash, MAX_WORKERS), &big, |_| {
        tried += 1;
        false
    });
    assert_eq!((r, tried), (None, PROBE_LIMIT));
}

#[test]
fn no_workers_or_too_many_select_nothing() {
    let m = Model::idle(MAX_WORKERS as usize + 1);
    assert_eq!(pick_any(&input(Policy::Hash, 0), &m), None);
    assert_eq!(pick_any(&input(Policy::Hash, MAX_WORKERS + 1), &m), None);
    assert_eq!(preferred(&input(Policy::RoundRobin, 0), &m), 0);
}

#[test]
fn a_cpus_connections_spread_over_the_workers_pinned_to_it_by_hash() {
    use corelane_steering_common::{pick_of, CpuWorkers};
    let two = CpuWorkers {
        count: 2,
        workers: [1, 3, 0, 0],
    };
    assert_eq!((two.pick(10), two.pick(11)), (1, 3));
    assert_eq!(
        CpuWorkers::default().pick(5),
        NO_WORKER,
        "no worker on this CPU"
    );
    // More than four: the first four are used.
    assert_eq!(pick_of(9, [4, 5, 6, 7], 7), 7);
    let mut seen = [0; 4];
    for h in 0..400 {
        seen[pick_of(4, [0, 1, 2, 3], h) as usize] += 1;
    }
    assert_eq!(seen, [100; 4]);
}

#[test]
fn policy_names_round_trip() {
    for p in Policy::ALL {
        assert_eq!(Policy::from_name(p.as_str()), Some(p));
        assert_eq!(Policy::from_u32(p as u32), Some(p));
    }
    assert_eq!(Policy::from_u32(9), None);
}
