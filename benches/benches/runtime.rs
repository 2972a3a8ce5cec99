//! The runtime's per-event building blocks: timer wheel insert/expire,
//! buffer pool take/return, token encode/decode.
//!
//! ```text
//! cargo bench -p corelane-benches --bench runtime
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use corelane::internals::{BufferPool, ConnToken, TimerWheel};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn timer_wheel(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_wheel");
    g.throughput(Throughput::Elements(10_000));
    // 10,000 deadlines spread over 60 s (idle timeouts), then one pass that
    // expires them all: the cost per connection of arming and firing.
    g.bench_function("schedule_10k", |b| {
        b.iter_batched(
            || TimerWheel::new(Instant::now(), Duration::from_millis(10), 1024),
            |mut w| {
                let t0 = Instant::now();
                for k in 0..10_000usize {
                    black_box(w.schedule(
                        k,
                        0,
                        t0 + Duration::from_millis((k as u64 * 6) % 60_000),
                    ));
                }
                w
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("expire_10k", |b| {
        b.iter_batched(
            || {
                let t0 = Instant::now();
                let mut w = TimerWheel::new(t0, Duration::from_millis(10), 1024);
                for k in 0..10_000usize {
                    w.schedule(k, 0, t0 + Duration::from_millis((k as u64 * 6) % 60_000));
                }
                (w, t0, Vec::with_capacity(10_000))
            },
            |(mut w, t0, mut due)| {
                w.expire(t0 + Duration::from_secs(61), &mut due);
                assert_eq!(due.len(), 10_000);
                due
            },
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let mut w = TimerWheel::new(t0, Duration::from_millis(10), 1024);
    for k in 0..10_000usize {
        w.schedule(k, 0, t0 + Duration::from_secs(60));
    }
    g.bench_function("next_due_cached", |b| b.iter(|| black_box(w.next_due())));
    g.finish();
}

fn buffer_pool(c: &mut Criterion) {
    let mut pool = BufferPool::new(16 * 1024, 256, Duration::from_secs(10));
    // Warm: the pool holds buffers, as in steady state.
    let warm: Vec<_> = (0..64).map(|_| pool.take()).collect();
    for b in warm {
        pool.give(b);
    }
    c.bench_function("buffer_pool/take_give", |b| {
        b.iter(|| {
            let buf = pool.take();
            pool.give(black_box(buf));
        })
    });
}

fn tokens(c: &mut Criterion) {
    c.bench_function("token/encode_decode", |b| {
        let mut key = 0usize;
        b.iter(|| {
            key = (key + 1) & 0xffff;
            let t: mio::Token = ConnToken {
                key,
                generation: key as u32,
            }
            .into();
            black_box(ConnToken::from(black_box(t)))
        })
    });
}

criterion_group!(benches, timer_wheel, buffer_pool, tokens);
criterion_main!(benches);
