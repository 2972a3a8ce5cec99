//! Messages to a worker, from another worker or from any thread, and work
//! offloaded to a pool of threads whose results come back the same way.
//!
//! Each worker has a bounded mailbox (a `sync_channel` of
//! [`mailbox_capacity`](crate::ServerOptions::mailbox_capacity)): a post to a
//! full mailbox fails at once with [`PostError::Full`], handing the message
//! back, instead of blocking the sender or dropping it. A post wakes the
//! worker's loop through its `Waker`, once per batch (a flag says whether a
//! wake-up is already on its way), and the worker hands each message to
//! [`Handler::on_message`](crate::Handler::on_message).
//!
//! Offloaded jobs ([`Context::offload`](crate::Context::offload)) run on the
//! server's offload threads; the queue in front of them is bounded
//! ([`offload_queue`](crate::ServerOptions::offload_queue)) and a full one
//! is an error the caller sees. A job's result travels back on a channel of
//! its own that is never full (at most the queue and the threads' jobs are
//! in flight), so a result is never lost to a busy mailbox.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use crate::handle::ConnHandle;

/// Where a [`Message`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Posted by a callback of worker `n` (possibly this one).
    Worker(usize),
    /// Posted from a thread outside the server's workers.
    Outside,
    /// The result of a job this worker offloaded: the body is a
    /// `Result<R, JobPanicked>` for the job's return type `R`.
    Offload,
}

/// A message delivered to [`Handler::on_message`](crate::Handler::on_message):
/// the sender's tag and body.
pub struct Message {
    /// The tag the sender chose.
    pub tag: u64,
    /// Who sent it.
    pub origin: Origin,
    body: Box<dyn Any + Send>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("tag", &self.tag)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Message {
    /// The body as a `T`, or the message back if it holds something else.
    ///
    /// # Errors
    ///
    /// The message, unchanged, when its body is not a `T`.
    pub fn downcast<T: Any>(self) -> Result<T, Message> {
        match self.body.downcast::<T>() {
            Ok(b) => Ok(*b),
            Err(body) => Err(Message { body, ..self }),
        }
    }

    /// The body, by reference, if it is a `T`.
    #[must_use]
    pub fn body<T: Any>(&self) -> Option<&T> {
        self.body.downcast_ref()
    }
}

/// An offloaded job panicked; its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offloaded job panicked: {0}")]
pub struct JobPanicked(pub String);

/// Why a message was not posted. The message comes back where it can.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum PostError {
    /// The worker's mailbox is full (it is not keeping up): the body is
    /// handed back; retry later or shed the work.
    #[error("worker {worker}'s mailbox is full")]
    Full {
        /// The worker posted to.
        worker: usize,
        /// The body that was not posted.
        body: Box<dyn Any + Send>,
    },
    /// The server has no such worker.
    #[error("no worker {0}")]
    NoWorker(usize),
    /// The worker has stopped.
    #[error("worker {0} has stopped")]
    Stopped(usize),
}

impl fmt::Debug for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a job was not offloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OffloadError {
    /// Every offload thread is busy and the queue in front of them is full.
    #[error("the offload queue is full")]
    Full,
    /// The server has no offload threads
    /// ([`offload_threads`](crate::ServerOptions::offload_threads) is 0),
    /// or they have stopped.
    #[error("no offload threads")]
    Unavailable,
}

/// A message on its way: for a connection (its id) or the worker.
pub(crate) struct Envelope {
    pub(crate) conn: Option<u64>,
    pub(crate) message: Message,
}

struct Mailbox {
    tx: SyncSender<Envelope>,
    /// Offload results: never full (bounded by the jobs in flight).
    results: Sender<Envelope>,
    /// The worker takes the receiving ends when it starts.
    rx: Mutex<Option<(Receiver<Envelope>, Receiver<Envelope>)>>,
    /// A wake-up is on its way (or the worker is about to look anyway).
    notified: AtomicBool,
    waker: OnceLock<Arc<mio::Waker>>,
}

impl Mailbox {
    fn wake(&self, worker: usize) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            if let Some(w) = self.waker.get() {
                if let Err(e) = w.wake() {
                    tracing::warn!(worker, error = %e, "waking a worker for its mailbox failed");
                }
            }
        }
    }
}

/// Every worker's mailbox: post to a worker, or to one of its connections,
/// from any thread. Cheap to clone; get it from
/// [`Server::mailboxes`](crate::Server::mailboxes),
/// [`ShutdownHandle::mailboxes`](crate::ShutdownHandle::mailboxes) or
/// [`WorkerInfo::mailboxes`](crate::WorkerInfo).
#[derive(Clone)]
pub struct Mailboxes {
    boxes: Arc<[Mailbox]>,
}

impl fmt::Debug for Mailboxes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailboxes")
            .field("workers", &self.boxes.len())
            .finish()
    }
}

impl Mailboxes {
    pub(crate) fn new(workers: usize, capacity: usize) -> Self {
        let boxes = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::sync_channel(capacity.max(1));
                let (results, results_rx) = mpsc::channel();
                Mailbox {
                    tx,
                    results,
                    rx: Mutex::new(Some((rx, results_rx))),
                    notified: AtomicBool::new(false),
                    waker: OnceLock::new(),
                }
            })
            .collect();
        Mailboxes { boxes }
    }

    /// The number of workers.
    #[must_use]
    pub fn workers(&self) -> usize {
        self.boxes.len()
    }

    /// Posts `body` to worker `worker`, which receives it in
    /// [`Handler::on_message`](crate::Handler::on_message) with no
    /// connection, `tag` and [`Origin::Outside`].
    ///
    /// # Errors
    ///
    /// [`PostError`]: the mailbox is full (the body comes back), or there is
    /// no such worker, or it has stopped.
    pub fn post(&self, worker: usize, tag: u64, body: impl Any + Send) -> Result<(), PostError> {
        self.send(worker, None, tag, Origin::Outside, Box::new(body))
    }

    /// Posts `body` for connection `conn`: its worker receives it in
    /// [`Handler::on_message`](crate::Handler::on_message) with that
    /// connection's state, if it is still open (otherwise the message is
    /// dropped, as a timer of a closed connection never fires).
    ///
    /// # Errors
    ///
    /// As [`post`](Self::post).
    pub fn post_to(
        &self,
        conn: ConnHandle,
        tag: u64,
        body: impl Any + Send,
    ) -> Result<(), PostError> {
        self.send(
            conn.worker(),
            Some(conn.id()),
            tag,
            Origin::Outside,
            Box::new(body),
        )
    }

    pub(crate) fn send(
        &self,
        worker: usize,
        conn: Option<u64>,
        tag: u64,
        origin: Origin,
        body: Box<dyn Any + Send>,
    ) -> Result<(), PostError> {
        let mailbox = self.boxes.get(worker).ok_or(PostError::NoWorker(worker))?;
        let envelope = Envelope {
            conn,
            message: Message { tag, origin, body },
        };
        match mailbox.tx.try_send(envelope) {
            Ok(()) => {
                mailbox.wake(worker);
                Ok(())
            }
            Err(TrySendError::Full(e)) => Err(PostError::Full {
                worker,
                body: e.message.body,
            }),
            Err(TrySendError::Disconnected(_)) => Err(PostError::Stopped(worker)),
        }
    }

    /// An offloaded job's result, for `worker`: never refused for room.
    fn deliver_result(
        &self,
        worker: usize,
        conn: Option<u64>,
        tag: u64,
        body: Box<dyn Any + Send>,
    ) {
        let Some(mailbox) = self.boxes.get(worker) else {
            return;
        };
        let envelope = Envelope {
            conn,
            message: Message {
                tag,
                origin: Origin::Offload,
                body,
            },
        };
        // Fails only when the worker has stopped: nobody is left to tell.
        if mailbox.results.send(envelope).is_ok() {
            mailbox.wake(worker);
        }
    }

    /// Worker `worker`'s receiving ends, once, and registers its waker.
    pub(crate) fn open(&self, worker: usize, waker: Arc<mio::Waker>) -> Inbox {
        let mailbox = &self.boxes[worker];
        let _ = mailbox.waker.set(waker);
        let (rx, results) = mailbox
            .rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("a worker's mailbox is opened once");
        // Anything posted before the waker was set is looked at first.
        mailbox.notified.store(true, Ordering::Release);
        Inbox {
            mailboxes: self.clone(),
            worker,
            rx,
            results,
        }
    }
}

/// One worker's receiving ends.
pub(crate) struct Inbox {
    mailboxes: Mailboxes,
    worker: usize,
    rx: Receiver<Envelope>,
    results: Receiver<Envelope>,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("worker", &self.worker)
            .finish()
    }
}

impl Inbox {
    /// Whether a post may be waiting: clears the flag (a post after this
    /// sets it again and wakes the loop).
    #[inline]
    pub(crate) fn take_notified(&self) -> bool {
        let notified = &self.mailboxes.boxes[self.worker].notified;
        notified.load(Ordering::Relaxed) && notified.swap(false, Ordering::AcqRel)
    }

    /// Whether a post may be waiting (the next turn must not wait).
    #[inline]
    pub(crate) fn pending(&self) -> bool {
        self.mailboxes.boxes[self.worker]
            .notified
            .load(Ordering::Relaxed)
    }

    /// Says the worker stopped early with messages left: look again next
    /// turn.
    pub(crate) fn renotify(&self) {
        self.mailboxes.boxes[self.worker]
            .notified
            .store(true, Ordering::Release);
    }

    /// The next message, results first.
    pub(crate) fn next(&self) -> Option<Envelope> {
        match self.results.try_recv() {
            Ok(e) => Some(e),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => self.rx.try_recv().ok(),
        }
    }
}

/// A job for the offload threads.
pub(crate) struct Job {
    worker: usize,
    conn: Option<u64>,
    tag: u64,
    run: Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>,
}

impl Job {
    pub(crate) fn new<R: Any + Send>(
        worker: usize,
        conn: Option<u64>,
        tag: u64,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Self {
        Job {
            worker,
            conn,
            tag,
            run: Box::new(move || {
                let result: Result<R, JobPanicked> = crate::panic::catch(f).map_err(JobPanicked);
                Box::new(result) as Box<dyn Any + Send>
            }),
        }
    }
}

/// The server's offload threads. Each worker holds a sender; the threads
/// end when every worker has ended (the queue's last sender is gone).
#[derive(Debug)]
pub(crate) struct OffloadPool {
    threads: Vec<thread::JoinHandle<()>>,
}

impl OffloadPool {
    /// Starts `threads` threads behind a queue of `queue` jobs; returns the
    /// pool and the queue's sender (`None` with no threads).
    pub(crate) fn start(
        threads: usize,
        queue: usize,
        mailboxes: &Mailboxes,
    ) -> std::io::Result<(OffloadPool, Option<SyncSender<Job>>)> {
        if threads == 0 {
            return Ok((
                OffloadPool {
                    threads: Vec::new(),
                },
                None,
            ));
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut started = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let mailboxes = mailboxes.clone();
            started.push(
                thread::Builder::new()
                    .name(format!("corelane-offload{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = job else { return };
                        let result = (job.run)();
                        mailboxes.deliver_result(job.worker, job.conn, job.tag, result);
                    })?,
            );
        }
        Ok((OffloadPool { threads: started }, Some(tx)))
    }

    /// Waits for the threads (after every worker, and so every sender, is gone).
    pub(crate) fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// What a worker's callbacks post and offload through.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub(crate) mailboxes: Mailboxes,
    /// The offload queue (`None` without offload threads).
    pub(crate) jobs: Option<SyncSender<Job>>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("worker", &self.worker)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// For a context outside any server: mailboxes nobody reads, no
    /// offload threads.
    pub(crate) fn detached(worker: usize) -> Self {
        Outbox {
            mailboxes: Mailboxes::new(worker + 1, 16),
            jobs: None,
        }
    }
}
