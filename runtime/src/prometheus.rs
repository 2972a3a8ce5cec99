//! The metrics in Prometheus text exposition format, for a server's own
//! `/metrics` route.

use std::io::Write;

use crate::handler::CloseReason;
use crate::metrics::Metrics;
use crate::WorkerMetrics;

/// The per-worker counter and gauge families: name, type, help, value.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WorkerMetrics) -> u64,
);

const FAMILIES: &[Family] = &[
    (
        "tls_handshakes_total",
        "counter",
        "TLS handshakes completed (failures are closes with reason tls_error).",
        |w| w.tls_handshakes,
    ),
    (
        "tls_resumed_total",
        "counter",
        "TLS handshakes that resumed a session.",
        |w| w.tls_resumed,
    ),
    (
        "connections_accepted_total",
        "counter",
        "Connections accepted.",
        |w| w.accepted,
    ),
    (
        "connections_active",
        "gauge",
        "Connections open now.",
        |w| w.active,
    ),
    (
        "outbound_connects_total",
        "counter",
        "Outbound connects started.",
        |w| w.connects,
    ),
    (
        "outbound_connect_failures_total",
        "counter",
        "Outbound connects that failed (refused, timed out, ...).",
        |w| w.connect_failures,
    ),
    (
        "messages_total",
        "counter",
        "Mailbox messages and offloaded results handed to the handler.",
        |w| w.messages,
    ),
    (
        "read_bytes_total",
        "counter",
        "Bytes read from connections.",
        |w| w.bytes_read,
    ),
    (
        "written_bytes_total",
        "counter",
        "Bytes written to connections.",
        |w| w.bytes_written,
    ),
    (
        "read_calls_total",
        "counter",
        "recvfrom(2) calls that returned bytes.",
        |w| w.reads,
    ),
    (
        "write_calls_total",
        "counter",
        "send(2)/sendmsg(2) calls that wrote bytes.",
        |w| w.writes,
    ),
    (
        "events_total",
        "counter",
        "Readiness events handled.",
        |w| w.events,
    ),
    (
        "loop_iterations_total",
        "counter",
        "Event loop turns.",
        |w| w.loop_iterations,
    ),
    (
        "accept_pauses_total",
        "counter",
        "Accept pauses for lack of descriptors or memory.",
        |w| w.accept_pauses,
    ),
    (
        "handler_panics_total",
        "counter",
        "Handler callbacks that panicked (caught; the worker kept serving).",
        |w| w.handler_panics,
    ),
    (
        "pool_idle_buffers",
        "gauge",
        "Buffers idle in the worker's pool.",
        |w| w.pool_idle,
    ),
    (
        "pool_lent_buffers",
        "gauge",
        "Buffers lent to connections.",
        |w| w.pool_outstanding,
    ),
    (
        "connection_table_slots",
        "gauge",
        "Capacity of the connection table.",
        |w| w.slab_capacity,
    ),
];

impl Metrics {
    /// Appends every worker's counters to `page` in Prometheus text
    /// exposition format (`corelane_*` families, one series per worker),
    /// with the steering program's counters when one is in force.
    pub fn write_prometheus(&self, page: &mut Vec<u8>) {
        let workers = self.snapshot();
        for &(name, kind, help, value) in FAMILIES {
            let _ = writeln!(
                page,
                "# HELP corelane_{name} {help}\n# TYPE corelane_{name} {kind}"
            );
            for w in &workers {
                let _ = writeln!(
                    page,
                    "corelane_{name}{{worker=\"{}\"}} {}",
                    w.worker,
                    value(w)
                );
            }
        }
        write_labelled(page, &workers);
        self.write_steering(page);
    }

    /// The steering mode in force and, under eBPF, the program's counters.
    fn write_steering(&self, page: &mut Vec<u8>) {
        let _ = writeln!(
            page,
            "# HELP corelane_steering_info The steering mode in force.\n\
             # TYPE corelane_steering_info gauge\ncorelane_steering_info{{mode=\"{}\"}} 1",
            self.steering_mode()
        );
        if let Some(st) = self.steering() {
            let _ = writeln!(
                page,
                "# HELP corelane_steering_selected_total Connections the eBPF program put on each worker (a migrated connection counts on both).\n\
                 # TYPE corelane_steering_selected_total counter"
            );
            for (w, n) in st.selected.iter().enumerate() {
                let _ = writeln!(
                    page,
                    "corelane_steering_selected_total{{worker=\"{w}\"}} {n}"
                );
            }
            let _ = writeln!(
                page,
                "# HELP corelane_steering_fallbacks_total Connections the eBPF program left to the kernel's hash.\n\
                 # TYPE corelane_steering_fallbacks_total counter\ncorelane_steering_fallbacks_total {}\n\
                 # HELP corelane_steering_migrated_total Connections moved off a closing listener.\n\
                 # TYPE corelane_steering_migrated_total counter\ncorelane_steering_migrated_total {}\n\
                 # HELP corelane_steering_generation This process's generation: 1 for the process that loaded the steering program, one more per takeover since.\n\
                 # TYPE corelane_steering_generation gauge\ncorelane_steering_generation {}",
                st.fallbacks, st.migrated, st.generation
            );
        }
    }
}

/// The families with a label beside the worker: closes by reason, reclamation
/// passes by kind.
fn write_labelled(page: &mut Vec<u8>, workers: &[WorkerMetrics]) {
    let _ = writeln!(
        page,
        "# HELP corelane_connections_closed_total Connections closed, by reason.\n\
         # TYPE corelane_connections_closed_total counter"
    );
    for w in workers {
        for reason in CloseReason::ALL {
            let _ = writeln!(
                page,
                "corelane_connections_closed_total{{worker=\"{}\",reason=\"{reason}\"}} {}",
                w.worker,
                w.closed(reason)
            );
        }
    }
    let _ = writeln!(
        page,
        "# HELP corelane_gc_passes_total Reclamation passes, by kind.\n\
         # TYPE corelane_gc_passes_total counter"
    );
    for w in workers {
        for (kind, n) in [
            ("pool_trim", w.pool_trims),
            ("idle_sweep", w.idle_sweeps),
            ("slab_shrink", w.slab_shrinks),
        ] {
            let _ = writeln!(
                page,
                "corelane_gc_passes_total{{worker=\"{}\",kind=\"{kind}\"}} {n}",
                w.worker
            );
        }
    }
}

/// Appends one per-worker family, `corelane_<name>{worker="i"} value`, to
/// `page`: for a server's own counters beside [`Metrics::write_prometheus`].
pub fn prometheus_family(page: &mut Vec<u8>, name: &str, kind: &str, help: &str, values: &[u64]) {
    let _ = writeln!(
        page,
        "# HELP corelane_{name} {help}\n# TYPE corelane_{name} {kind}"
    );
    for (w, v) in values.iter().enumerate() {
        let _ = writeln!(page, "corelane_{name}{{worker=\"{w}\"}} {v}");
    }
}
