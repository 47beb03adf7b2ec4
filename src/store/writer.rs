//! The store's one writer: a thread that runs every write, so that no fsync ever happens on an
//! async worker thread, and that concurrent writes share one fsync (group commit).
//!
//! A write is a job: a closure over a redb write transaction, sent over a channel. The thread
//! takes every job waiting, runs them one after the other in one transaction, commits it once
//! (`Durability::Immediate`: one fsync for all), and only then answers each job. A caller that
//! hears `Ok` has its write on disk, which is what lets SMTP say `250` and IMAP `OK`.
//!
//! One job's failure must not cost the others their writes. redb takes savepoints only before a
//! transaction has written anything, so a job that fails half-way cannot be undone alone inside
//! the shared transaction. Instead the writer aborts the transaction, answers the failed job
//! with its error, and runs the rest of the group again in a fresh transaction (a job is
//! `FnMut` for that reason; it is answered with the value of the run that was committed). A
//! job that refuses before writing anything ([`StoreError::QueueFull`]) needs no rerun. A job
//! may also undo its own writes and still answer a value ([`Txn::discard`]), e.g. for a limit
//! that its writes would pass; that costs a rerun as well. Runs are cheap next to an fsync, and
//! failures rare.
//!
//! (Committing each job without fsync, `Durability::None`, and the last one durably would avoid
//! the reruns, but redb makes non-durable commits visible to readers before they are on disk,
//! and makes them durable when the file is closed, even after the group's durable commit
//! failed: a caller told "failed" could find its write stored after all.)
//!
//! Jobs that arrive while a group commits wait for the next group; the more writers wait on
//! the disk, the more share each fsync.

use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use redb::WriteTransaction;
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::{File, StoreError};

/// Jobs run between two fsyncs at most; the rest wait for the next group.
const MAX_GROUP: usize = 512;

/// A job's view of its transaction: the transaction (to open tables), and a way to undo the
/// job's writes while still answering its value.
pub(super) struct Txn<'a> {
    txn: &'a WriteTransaction,
    discard: bool,
}

impl Txn<'_> {
    /// Undoes this job's writes (the transaction is aborted, not committed); the job's value is
    /// still its answer. For refusals that are found after writing, e.g. a limit that the
    /// writes would pass.
    pub(super) fn discard(&mut self) {
        self.discard = true;
    }
}

impl Deref for Txn<'_> {
    type Target = WriteTransaction;

    fn deref(&self) -> &WriteTransaction {
        self.txn
    }
}

/// A write waiting for its durable commit. Await it on the runtime; [`Pending::wait`] blocks
/// for it where blocking is allowed (not on a runtime thread).
///
/// The write is sent to the writer when the `Pending` is made: dropping it does not cancel the
/// write, it only leaves its outcome unheard.
#[must_use = "a store write says whether it is durable only when awaited"]
pub struct Pending<T> {
    answer: oneshot::Receiver<Result<T, StoreError>>,
}

impl<T> Pending<T> {
    /// Blocks until the write is durable (or failed). Panics on a tokio runtime thread, which
    /// must await instead: there, blocking would stall every task on that thread.
    pub fn wait(self) -> Result<T, StoreError> {
        self.answer.blocking_recv().unwrap_or(Err(StoreError::WriterGone))
    }

    pub(super) fn ready(result: Result<T, StoreError>) -> Pending<T> {
        let (tx, answer) = oneshot::channel();
        let _ = tx.send(result);
        Pending { answer }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer).poll(cx).map(|r| r.unwrap_or(Err(StoreError::WriterGone)))
    }
}

/// A type-erased job as the writer thread sees it.
trait Job: Send {
    /// Runs the write (again, after a rerun); what the writer must do about it.
    fn run(&mut self, txn: &mut Txn<'_>) -> Ran;
    /// Answers the caller: the value or error of its last run if `outcome` is `Ok` (its
    /// write is durable, or it wrote nothing), else the error that stopped its group.
    fn answer(self: Box<Self>, outcome: Result<(), StoreError>);
}

/// What a job's run means for the shared transaction.
#[derive(Debug, PartialEq, Eq)]
enum Ran {
    /// Its writes are to be committed with the group's.
    Keep,
    /// It failed without writing anything: the transaction goes on.
    Refused,
    /// It failed or discarded after writing: the transaction must be rolled back without it.
    Undo,
}

struct Typed<T, F> {
    work: F,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
    /// Run on the writer thread once the job's write is durable (e.g. removing a file the
    /// committed write no longer names), before the caller hears of it.
    after: Option<AfterCommit<T>>,
}

/// What a write does once it is durable; see [`Writer::submit_then`].
pub(super) type AfterCommit<T> = Box<dyn FnOnce(&T) + Send>;

impl<T, F> Job for Typed<T, F>
where
    T: Send,
    F: FnMut(&mut Txn<'_>) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, txn: &mut Txn<'_>) -> Ran {
        let result = catch_unwind(AssertUnwindSafe(|| (self.work)(txn))).unwrap_or_else(|_| {
            error!("a store write panicked; it was rolled back");
            Err(StoreError::Corrupt("a store write failed unexpectedly".into()))
        });
        let ran = match &result {
            Err(e) if e.wrote_nothing() => Ran::Refused,
            Err(_) => Ran::Undo,
            Ok(_) if txn.discard => Ran::Undo,
            Ok(_) => Ran::Keep,
        };
        if ran == Ran::Undo {
            // Not committed (it is answered without a rerun): nothing to do after.
            self.after = None;
        }
        self.result = Some(result);
        ran
    }

    fn answer(self: Box<Self>, outcome: Result<(), StoreError>) {
        let Typed { result, reply, after, .. } = *self;
        let result = match (result, outcome) {
            (Some(result), Ok(())) => result,
            (_, Err(e)) => Err(e),
            (None, Ok(())) => Err(StoreError::WriterGone),
        };
        if let (Ok(value), Some(after)) = (&result, after) {
            after(value);
        }
        // The caller may have stopped waiting; the write stands all the same.
        let _ = reply.send(result);
    }
}

/// Counts of what the writer did, for tests and metrics.
#[derive(Debug, Default)]
pub(super) struct Stats {
    /// Durable commits (one fsync each).
    pub(super) commits: AtomicU64,
    /// Jobs whose writes a durable commit holds.
    pub(super) committed_jobs: AtomicU64,
    /// Transactions rolled back to drop a failed job and run the rest again.
    pub(super) reruns: AtomicU64,
}

/// The handle to the writer thread; dropping it lets the thread finish the jobs sent so far
/// and waits for it, so that the file is closed when the last `Store` is gone.
pub(super) struct Writer {
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    pub(super) stats: Arc<Stats>,
}

impl Writer {
    pub(super) fn start(file: Arc<File>) -> Result<Writer, StoreError> {
        let (jobs, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let path = file.path.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(&file, &rx, &thread_stats))
            .map_err(|e| StoreError::Open { path, reason: format!("cannot start its writer thread: {e}") })?;
        Ok(Writer { jobs: Some(jobs), thread: Some(thread), stats })
    }

    /// Sends `work` to the writer thread.
    pub(super) fn submit<T, F>(&self, work: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Txn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit_then(work, None)
    }

    /// As [`Writer::submit`]; `after` runs on the writer thread once the write is durable.
    pub(super) fn submit_then<T, F>(&self, work: F, after: Option<AfterCommit<T>>) -> Pending<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Txn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Typed { work, result: None, reply, after });
        match self.jobs.as_ref().map(|jobs| jobs.send(job)) {
            Some(Ok(())) => Pending { answer },
            _ => Pending::ready(Err(StoreError::WriterGone)),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        // A job holding the last `Store` would drop it on the writer thread itself.
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

fn run(file: &File, rx: &mpsc::Receiver<Box<dyn Job>>, stats: &Stats) {
    loop {
        let Ok(first) = rx.recv() else { return };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(file, group, stats);
    }
}

/// Runs `group` in one transaction and commits it with one fsync; answers every job.
fn commit_group(file: &File, mut group: Vec<Box<dyn Job>>, stats: &Stats) {
    while !group.is_empty() {
        let txn = match file.begin_write() {
            Ok(txn) => txn,
            Err(e) => return fail(group, &e),
        };
        let mut view = Txn { txn: &txn, discard: false };
        let mut undo = None;
        let mut refused = Vec::new();
        for (i, job) in group.iter_mut().enumerate() {
            view.discard = false;
            match job.run(&mut view) {
                Ran::Keep => {}
                Ran::Refused => refused.push(i),
                Ran::Undo => {
                    undo = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = undo {
            if let Err(e) = txn.abort() {
                warn!("cannot roll back a store transaction: {e}");
            }
            stats.reruns.fetch_add(1, Ordering::Relaxed);
            // Nothing of it is written; the others run again without it.
            group.remove(i).answer(Ok(()));
            continue;
        }
        // Refused jobs wrote nothing: their answer need not wait for the fsync.
        for i in refused.into_iter().rev() {
            group.remove(i).answer(Ok(()));
        }
        match txn.commit() {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.committed_jobs.fetch_add(group.len() as u64, Ordering::Relaxed);
                for job in group {
                    job.answer(Ok(()));
                }
            }
            Err(e) => {
                let e = StoreError::from(e);
                warn!(writes = group.len(), "a store commit failed: {e}");
                fail(group, &e);
            }
        }
        return;
    }
}

fn fail(group: Vec<Box<dyn Job>>, e: &StoreError) {
    for job in group {
        job.answer(Err(e.for_group()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    use redb::TableDefinition;

    use super::super::Store;
    use super::*;

    /// A table of the tests only.
    const T: TableDefinition<&str, u64> = TableDefinition::new("writer_test");

    fn put(store: &Store, key: &'static str, value: u64) -> Pending<u64> {
        store.write(move |txn| {
            txn.open_table(T)?.insert(key, value)?;
            Ok(value)
        })
    }

    fn get(store: &Store, key: &str) -> Option<u64> {
        let txn = store.begin_read().unwrap();
        let table = txn.open_table(T).ok()?;
        table.get(key).unwrap().map(|v| v.value())
    }

    /// A job that holds the writer until told to go on, so that the jobs sent meanwhile
    /// wait together; returns once the writer runs it.
    fn hold(store: &Store) -> (Pending<u64>, std_mpsc::Sender<()>) {
        let (running_tx, running) = std_mpsc::channel();
        let (go, go_rx) = std_mpsc::channel::<()>();
        let held = store.write(move |txn| {
            let _ = running_tx.send(());
            let _ = go_rx.recv_timeout(Duration::from_secs(30));
            txn.open_table(T)?.insert("held", 1)?;
            Ok(1)
        });
        running.recv_timeout(Duration::from_secs(30)).expect("the writer runs the held job");
        (held, go)
    }

    #[test]
    fn writes_waiting_together_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (held, go) = hold(&store);
        let (commits, _) = store.commit_counts();
        let keys: Vec<&'static str> = (0..50).map(|i| &*format!("k{i}").leak()).collect();
        let pending: Vec<Pending<u64>> = keys.iter().enumerate().map(|(i, k)| put(&store, k, i as u64)).collect();
        go.send(()).unwrap();
        assert_eq!(held.wait().unwrap(), 1);
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(p.wait().unwrap(), i as u64);
        }
        let (after, jobs) = store.commit_counts();
        assert_eq!(after - commits, 2, "the held job's commit, then one for all 50 that waited");
        assert_eq!(jobs, 51);
        assert!(keys.iter().enumerate().all(|(i, k)| get(&store, k) == Some(i as u64)));
        // And durable: in the file after closing it.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(get(&store, "k49"), Some(49));
    }

    #[test]
    fn a_failing_write_loses_nothing_of_the_others_and_gets_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (held, go) = hold(&store);
        let (commits, _) = store.commit_counts();
        let a = put(&store, "a", 1);
        let fails = store.write(|txn| -> Result<u64, StoreError> {
            txn.open_table(T)?.insert("b", 2)?;
            Err(StoreError::Corrupt("job b failed".into()))
        });
        let c = put(&store, "c", 3);
        let discards = store.write(|txn| {
            txn.open_table(T)?.insert("d", 4)?;
            txn.discard();
            Ok("refused by a limit")
        });
        let panics = store.write(|txn| -> Result<u64, StoreError> {
            txn.open_table(T)?.insert("e", 5)?;
            panic!("a bug in a write");
        });
        let refuses = store.write(|_txn| -> Result<u64, StoreError> { Err(StoreError::QueueFull("no room".into())) });
        let f = put(&store, "f", 6);
        go.send(()).unwrap();
        held.wait().unwrap();

        assert_eq!(a.wait().unwrap(), 1);
        assert!(matches!(fails.wait(), Err(StoreError::Corrupt(why)) if why == "job b failed"));
        assert_eq!(c.wait().unwrap(), 3);
        assert_eq!(discards.wait().unwrap(), "refused by a limit");
        assert!(matches!(panics.wait(), Err(StoreError::Corrupt(_))));
        assert!(matches!(refuses.wait(), Err(StoreError::QueueFull(_))));
        assert_eq!(f.wait().unwrap(), 6);
        let found: Vec<Option<u64>> = ["a", "b", "c", "d", "e", "f"].iter().map(|k| get(&store, k)).collect();
        assert_eq!(found, [Some(1), None, Some(3), None, None, Some(6)]);
        let stats = &store.inner.writer.stats;
        assert_eq!(stats.reruns.load(Ordering::Relaxed), 3, "b, d and e undone; the refusal wrote nothing");
        assert_eq!(store.commit_counts().0 - commits, 2, "still one commit for the group");
        // The writer goes on after a panic.
        assert_eq!(put(&store, "g", 7).wait().unwrap(), 7);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn awaiting_a_write_leaves_the_runtime_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Held on the writer thread: a blocking commit here would stop this one-thread runtime.
        let (held, go) = hold(&store);
        let waiting = tokio::spawn(held);
        let other = tokio::spawn(put(&store, "x", 2));
        // The runtime still runs timers and tasks while both writes wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished() && !other.is_finished());
        go.send(()).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), 1);
        assert_eq!(other.await.unwrap().unwrap(), 2);
    }

    /// A tmpfs for one test; unmounted on drop.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        /// `None` where mounting is not allowed (not root).
        fn mount(size: &str) -> Option<SmallDisk> {
            let dir = tempfile::tempdir().unwrap();
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                .then_some(SmallDisk(dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }

    #[test]
    fn after_an_io_error_the_store_opens_the_file_again() {
        let Some(disk) = SmallDisk::mount("4m") else {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return;
        };
        let store = Store::open(disk.0.path()).unwrap();
        assert_eq!(put(&store, "before", 1).wait().unwrap(), 1);
        let filler = disk.0.path().join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            while f.write_all(&[0u8; 64 * 1024]).is_ok() {}
            let _ = f.write_all(&[0]);
        }
        // Big enough that the file must grow.
        let big = |key: &'static str| {
            store.write(move |txn| {
                txn.open_table(BIG)?.insert(key, vec![7u8; 512 * 1024].as_slice())?;
                Ok(())
            })
        };
        let writes: Vec<Pending<()>> = vec![big("x1"), big("x2")];
        for w in writes {
            assert!(matches!(w.wait(), Err(StoreError::DiskFull)), "a write on a full disk fails as such");
        }
        std::fs::remove_file(&filler).unwrap();
        // Nothing acknowledged was lost, and the writer works again without a restart.
        big("x3").wait().expect("a write once there is room again");
        assert_eq!(put(&store, "after", 2).wait().unwrap(), 2);
        assert_eq!((get(&store, "before"), get(&store, "after")), (Some(1), Some(2)));
        assert!(store.inner.file.reopened.load(Ordering::Relaxed) >= 1, "the file was opened again");
        drop(store);
        let store = Store::open(disk.0.path()).unwrap();
        assert_eq!(get(&store, "after"), Some(2));
        let txn = store.begin_read().unwrap();
        let big = txn.open_table(BIG).unwrap();
        assert!(big.get("x1").unwrap().is_none() && big.get("x3").unwrap().is_some());
    }

    const BIG: TableDefinition<&str, &[u8]> = TableDefinition::new("writer_test_big");
}
