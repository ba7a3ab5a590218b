//! A connection's inbox: a bounded queue with one receiver, that holds no memory while empty.
//!
//! Every connection has two (room deliveries, and answers of its spawned work). tokio's mpsc
//! allocates a block of slots and its channel state up front, most of an idle connection's
//! memory. This queue is a `VecDeque` behind the
//! connection's own mutex (no lock is shared between connections), grown as items come and
//! released when drained.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Poll, Waker},
};

use tokio::sync::Notify;

/// Items kept allocated after the queue drains; a larger buffer is released.
const KEEP: usize = 8;

struct Shared<T> {
    state: Mutex<State<T>>,
    bound: usize,
    senders: AtomicUsize,
    /// Told when an item is taken or the receiver is gone: a sender waiting for room.
    space: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    receiver: Option<Waker>,
    closed: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding it leaves a queue that is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A queue of at most `bound` items.
pub fn inbox<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            receiver: None,
            closed: false,
        }),
        bound: bound.max(1),
        senders: AtomicUsize::new(1),
        space: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// Why an item was not queued; it is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    Full(T),
    Closed(T),
}

pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: a receiver waiting must learn that nothing more comes.
            let waker = self.0.lock().receiver.take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item` now, or hands it back when the queue is full or the receiver gone.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.0.lock();
            if state.closed {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= self.0.bound {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
            state.receiver.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting for room; hands it back when the receiver is gone.
    pub async fn send(&self, mut item: T) -> Result<(), T> {
        loop {
            let space = self.0.space.notified();
            tokio::pin!(space);
            // Registered before trying, so a slot freed in between is not missed.
            space.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => item = back,
            }
            space.await;
        }
    }
}

pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.0.lock();
            state.closed = true;
            std::mem::take(&mut state.items)
        };
        drop(items); // outside the lock
        self.0.space.notify_waiters();
    }
}

impl<T> Receiver<T> {
    /// The next item, waiting for one; `None` once every sender is gone and the queue is empty.
    /// Cancel-safe: an item is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut state = self.0.lock();
            if let Some(item) = self.take(&mut state) {
                return Poll::Ready(Some(item));
            }
            if self.0.senders.load(Ordering::Acquire) == 0 {
                return Poll::Ready(None);
            }
            match &mut state.receiver {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut state = self.0.lock();
        self.take(&mut state)
    }

    fn take(&self, state: &mut State<T>) -> Option<T> {
        let item = state.items.pop_front()?;
        if state.items.is_empty() && state.items.capacity() > KEEP {
            state.items = VecDeque::new();
        }
        if state.items.len() + 1 == self.0.bound {
            // It was full: a sender may be waiting.
            self.0.space.notify_waiters();
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_come_out_in_order_and_a_full_queue_refuses() {
        let (tx, mut rx) = inbox(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(tx.try_send(3), Ok(()));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_and_learns_when_senders_are_gone() {
        let (tx, mut rx) = inbox::<u32>(4);
        let tx2 = tx.clone();
        let got = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.try_send(7).unwrap();
        drop(tx);
        drop(tx2);
        assert_eq!(got.await.unwrap(), (Some(7), None));
    }

    #[tokio::test]
    async fn send_waits_for_room_and_fails_when_the_receiver_is_gone() {
        let (tx, mut rx) = inbox(1);
        tx.try_send(1).unwrap();
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(2).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room yet");
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(rx.recv().await, Some(2));
        tx.try_send(3).unwrap();
        let tx3 = tx.clone();
        let blocked = tokio::spawn(async move { tx3.send(4).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(blocked.await.unwrap(), Err(4));
        assert_eq!(tx.try_send(5), Err(TrySendError::Closed(5)));
    }

    #[tokio::test]
    async fn a_drained_queue_lets_its_buffer_go() {
        let (tx, mut rx) = inbox(1024);
        for i in 0..100 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.lock().items.capacity(), 0);
    }
}
