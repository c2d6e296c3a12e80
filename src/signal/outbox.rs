//! The frames waiting for one signaling session: filled by any connection's
//! task (signals, presence, replies), drained by the task of the connection
//! the session is attached to, and bounded by `max-queued-bytes`.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;

use super::websocket;

/// One frame waiting to be sent, and whether it only reports presence
/// (dropped on resume, where `joined` tells the current state instead).
pub(crate) struct Queued {
    pub(crate) frame: Bytes,
    presence: bool,
    /// Already in the words of the protocol the client speaks,
    /// not a native message to translate.
    pub(crate) spoken: bool,
}

impl Queued {
    /// A frame of the client's dialect.
    pub(crate) fn spoken(frame: Bytes) -> Self {
        Self {
            frame,
            presence: false,
            spoken: true,
        }
    }
}

/// Which connection a session is attached to: a number per attachment, so
/// that a connection superseded by a resume can tell.
pub(crate) type Attachment = u64;

/// Frames for one session, filled by any connection's task and drained by
/// the task of the connection the session is attached to.
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    max_bytes: usize,
}

struct OutboxState {
    frames: VecDeque<Queued>,
    bytes: usize,
    closing: Option<Closing>,
    /// The attached connection and its task's waker; `None` while held for resume.
    attached: Option<(Attachment, Option<Waker>)>,
}

/// Why the attached connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// More was queued than `max-queued-bytes`: the client is not reading.
    Overflowed,
    /// The operator ended the session (a ban, `DELETE /allocations?user=`).
    Ended,
    /// icegate is stopping.
    Stopping,
}

/// What the attached connection should do next.
pub(crate) enum Drained {
    /// Go on: whatever was queued is now at the end of the caller's queue.
    Send,
    Close(Closing),
    /// A resumed connection took the session over.
    Superseded,
}

impl Outbox {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(OutboxState {
                frames: VecDeque::new(),
                bytes: 0,
                closing: None,
                attached: None,
            }),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, frame: Bytes) {
        self.push_frame(frame, false);
    }

    pub(crate) fn push_frame(&self, frame: Bytes, presence: bool) {
        self.enqueue(Queued {
            frame,
            presence,
            spoken: false,
        });
    }

    /// Queues a frame already in the client's dialect.
    pub(crate) fn push_spoken(&self, frame: Bytes) {
        self.enqueue(Queued::spoken(frame));
    }

    fn enqueue(&self, queued: Queued) {
        let frame_len = queued.frame.len();
        let mut state = self.lock();
        if state.closing.is_some() {
            return;
        }
        if state.bytes + frame_len > self.max_bytes {
            state.closing = Some(Closing::Overflowed);
            state.frames = VecDeque::new();
            state.bytes = 0;
        } else {
            state.bytes += frame_len;
            state.frames.push_back(queued);
        }
        if let Some((_, Some(waker))) = &state.attached {
            waker.wake_by_ref();
        }
    }

    /// Moves everything queued for `attachment` into `into` once that is
    /// empty, and has `waker` woken when more comes.
    pub(crate) fn drain(
        &self,
        attachment: Attachment,
        waker: &Waker,
        into: &mut VecDeque<Queued>,
    ) -> Drained {
        let mut state = self.lock();
        match &mut state.attached {
            Some((attached, registered)) if *attached == attachment => {
                if !registered.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *registered = Some(waker.clone());
                }
            }
            _ => return Drained::Superseded,
        }
        if let Some(closing) = state.closing {
            return Drained::Close(closing);
        }
        // Frames stay here (and count against `max-queued-bytes`) until the
        // connection has written what it took before: a client that does
        // not read fills this queue, not the connection's.
        if into.is_empty() {
            state.bytes = 0;
            std::mem::swap(&mut state.frames, into);
        }
        Drained::Send
    }

    /// Moves everything still queued to `into`, as the attached connection
    /// closes.
    pub(crate) fn take_all(&self, attachment: Attachment, into: &mut VecDeque<Queued>) {
        let mut state = self.lock();
        if state
            .attached
            .as_ref()
            .is_some_and(|(attached, _)| *attached == attachment)
        {
            state.bytes = 0;
            into.extend(state.frames.drain(..));
        }
    }

    /// Hands the session to a connection: `first` goes out before anything
    /// already queued. A previously attached connection is woken to leave.
    pub(crate) fn attach(&self, attachment: Attachment, first: Vec<String>, resumed: bool) {
        let mut state = self.lock();
        if resumed {
            state.frames.retain(|q| !q.presence);
        }
        for text in first.into_iter().rev() {
            state.bytes += text.len();
            state.frames.push_front(Queued {
                frame: websocket::text(&text),
                presence: false,
                spoken: false,
            });
        }
        if let Some((_, Some(old))) = state.attached.replace((attachment, None)) {
            old.wake();
        }
    }

    pub(crate) fn detach(&self, attachment: Attachment) -> bool {
        let mut state = self.lock();
        if state
            .attached
            .as_ref()
            .is_some_and(|(attached, _)| *attached == attachment)
        {
            state.attached = None;
            true
        } else {
            false
        }
    }

    pub(crate) fn is_overflowed(&self) -> bool {
        self.lock().closing == Some(Closing::Overflowed)
    }

    /// Tells the attached connection, if any, to close.
    pub(crate) fn close_with(&self, closing: Closing) {
        let mut state = self.lock();
        state.closing.get_or_insert(closing);
        if let Some((_, Some(waker))) = &state.attached {
            waker.wake_by_ref();
        }
    }
}
