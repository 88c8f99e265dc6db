//! A small bounded queue for one reader (a member's messages, a seat's takeover requests).
//!
//! Like a bounded `tokio::sync::mpsc` channel it refuses an item over its limit
//! ([`TrySendError::Full`]) and ends (`recv` gives `None`) once every sender is gone and it is
//! empty. Unlike one, it holds no memory while empty: tokio's channel keeps cache-padded
//! counters and at least one 32-slot block per channel (about 1 KiB), and keeps the blocks a
//! burst grew, which thousands of idle signaling connections would all hold. Here the items
//! live in a `VecDeque` that grows with a burst and is freed when the reader empties it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Above this capacity, an emptied buffer is freed rather than kept for the next burst.
const KEEP_CAPACITY: usize = 4;

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the reader when an item arrives or the last sender goes.
    ready: Notify,
    limit: usize,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section leaves the state whole, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new queue holding at most `limit` items (at least one).
pub fn queue<T>(limit: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver: true,
        }),
        ready: Notify::new(),
        limit: limit.max(1),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

/// The sending side; clones share the queue, which ends when the last one is dropped.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The one reading side. Dropping it frees what was queued and refuses later items.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// Why [`Sender::try_send`] refused an item (it is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    /// The queue holds its limit already.
    #[error("the queue is full")]
    Full,
    /// The receiver is gone.
    #[error("the queue's reader is gone")]
    Closed,
}

/// Why [`Receiver::try_recv`] gave nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing queued now; senders remain.
    #[error("the queue is empty")]
    Empty,
    /// Nothing queued and every sender is gone.
    #[error("the queue has ended")]
    Disconnected,
}

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or its receiver is gone; never waits.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError> {
        let mut state = self.shared.state();
        if !state.receiver {
            return Err(TrySendError::Closed);
        }
        if state.items.len() >= self.shared.limit {
            return Err(TrySendError::Full);
        }
        state.items.push_back(item);
        drop(state);
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.state().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.senders -= 1;
        let last = state.senders == 0;
        drop(state);
        if last {
            self.shared.ready.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// The next item, oldest first, without waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.state();
        match state.items.pop_front() {
            Some(item) => {
                if state.items.is_empty() && state.items.capacity() > KEEP_CAPACITY {
                    state.items = VecDeque::new();
                }
                Ok(item)
            }
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next item, waiting for one; `None` once every sender is gone and nothing is left.
    /// Cancel-safe: dropping the future loses no item.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Disconnected) => return None,
                // An item or the last sender's drop after this check stores a permit in
                // `ready` (or wakes the waiter), so no wake-up is lost.
                Err(TryRecvError::Empty) => self.shared.ready.notified().await,
            }
        }
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.shared.state().items.len()
    }

    /// Whether nothing is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.receiver = false;
        let items = std::mem::take(&mut state.items);
        drop(state);
        // Dropped outside the lock: an item may be a seat whose drop leaves a room.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounded_in_order_and_ends_after_the_last_sender() {
        let (tx, mut rx) = queue::<u32>(2);
        let tx2 = tx.clone();
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx2.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full));
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(tx.try_send(4), Ok(()));
        drop(tx);
        drop(tx2);
        // What was queued is still delivered, then the end.
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(4));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn a_gone_receiver_refuses_and_an_emptied_burst_is_freed() {
        let (tx, mut rx) = queue::<Vec<u8>>(100);
        for _ in 0..50 {
            tx.try_send(vec![0; 10]).unwrap();
        }
        assert!(rx.shared.state().items.capacity() >= 50);
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.state().items.capacity(), 0);
        drop(rx);
        assert_eq!(tx.try_send(vec![]), Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn recv_waits_for_an_item_or_the_end() {
        let (tx, mut rx) = queue::<u32>(4);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = rx.recv().await {
                got.push(item);
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(7).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(8).unwrap();
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader ends")
            .unwrap();
        assert_eq!(got, vec![7, 8]);
    }
}
