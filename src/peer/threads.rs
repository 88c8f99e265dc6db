//! Media threads: a few dedicated threads, each running a single-threaded tokio runtime, on
//! which the connections' webrtc-rs drivers run, and with them the tasks their events spawn
//! (a recorder's track tasks, a bot's senders: `tokio::spawn` from a handler lands on the
//! driver's thread).
//!
//! Why: a connection's packets go socket → driver → track task → file. On tokio's
//! work-stealing runtime each of those hand-offs may wake a parked worker on the other core
//! (a futex call and a steal for one packet); pinned to one thread they are a push onto a local
//! queue, and one wait for readiness returns many connections' sockets. Measured at 100
//! participants on two cores: about 15 % less CPU than the drivers on the main runtime (README
//! § Performance). webrtc-rs hands a connection's driver to [`Runtime::spawn_reactor`] when
//! its builder is given a dedicated reactor pool size; recbot's runtime adapter routes that
//! here, so the threads are recbot's own (named, counted in the task gauge, ended with the
//! factory).
//!
//! Invariants: a connection stays on the thread it was given (round-robin at build); a
//! thread ends when the last [`MediaThreads`] handle is gone, dropping the tasks still on it.
//!
//! [`Runtime::spawn_reactor`]: webrtc::runtime::Runtime::spawn_reactor

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;

/// The pool; see the module doc.
#[derive(Debug)]
pub struct MediaThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with the pool: each thread's runtime then returns from its wait and ends.
    _stop: tokio::sync::watch::Sender<()>,
}

impl MediaThreads {
    /// Starts `count` threads (at least one), named `recbot-media{i}`.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let (stop, stopped) = tokio::sync::watch::channel(());
        let mut handles = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("recbot-media{i}"))
                .spawn(move || {
                    // `changed` fails once the sender is dropped: the pool is gone.
                    runtime.block_on(async move { while stopped.changed().await.is_ok() {} });
                })?;
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// How many threads.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never true: a pool has at least one thread.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `future` on the next thread (round-robin).
    pub fn spawn(
        &self,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> tokio::task::JoinHandle<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(future)
    }

    /// Tasks alive on the pool's threads (for the process's task gauge).
    pub fn alive_tasks(&self) -> usize {
        self.handles
            .iter()
            .map(|h| h.metrics().num_alive_tasks())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_pool_threads_spread_round_robin_and_are_counted() {
        let pool = MediaThreads::start(2).unwrap();
        assert_eq!(pool.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, held) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let tx = tx.clone();
            let mut held = held.clone();
            pool.spawn(Box::pin(async move {
                let name = std::thread::current().name().map(str::to_owned);
                // A task spawned from here runs on this thread's runtime too.
                let inner =
                    tokio::spawn(async { std::thread::current().name().map(str::to_owned) });
                assert_eq!(inner.await.unwrap(), name);
                tx.send(name).unwrap();
                let _ = held.wait_for(|r| *r).await;
            }));
        }
        let mut names: Vec<String> = (0..4)
            .map(|_| {
                rx.recv_timeout(std::time::Duration::from_secs(5))
                    .unwrap()
                    .unwrap()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "recbot-media0",
                "recbot-media0",
                "recbot-media1",
                "recbot-media1"
            ]
        );
        // The four held tasks are counted (their inner ones have ended), then none.
        let settles_at = |n: usize| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while pool.alive_tasks() != n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "alive tasks never {n}"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        settles_at(4);
        release.send(true).unwrap();
        settles_at(0);
    }

    #[test]
    fn threads_end_with_the_pool_dropping_their_tasks() {
        let pool = MediaThreads::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // A task that never ends holds `tx`; dropping the pool drops the task, and so `tx`.
        pool.spawn(Box::pin(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        }));
        drop(pool);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
