//! What sessions may still see: message bodies outlive their rows until no session can read them.
//!
//! An IMAP session keeps its own view of the selected mailbox; a message another session expunged
//! stays in that view (and readable: FETCH, SEARCH) until the session may be told (RFC 3501 7.4.1,
//! RFC 2180 4.1). So a body whose last row is deleted is not removed at once: it goes to a trash
//! list tagged with a sequence number, and is removed when every open view has synced past it.
//!
//! A view ([`ViewPin`]) records the sequence number current *before* it read the message list.
//! A body trashed at sequence `t` can go once every view's number is at least `t`: such a view
//! read its list after the row was gone, so it cannot list the message. Dovecot and Cyrus keep
//! expunged mail readable to sessions that have not yet seen the EXPUNGE in the same way.
//!
//! In memory only: after a crash the trashed files are unreferenced blobs, which the start-up
//! orphan sweep removes (no session can hold a view across a restart).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::blob::BlobStore;

#[derive(Default)]
struct State {
    /// Bumped each time bodies are trashed.
    seq: u64,
    /// (sequence number, blob id), oldest first.
    pending: VecDeque<(u64, String)>,
    /// Open views: id -> the sequence number current before the view last read its list.
    views: HashMap<u64, u64>,
    next_view: u64,
}

/// The trash of message bodies, shared by all clones of a store.
#[derive(Default)]
pub struct Trash {
    state: Mutex<State>,
}

impl Trash {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bodies whose last row was just deleted: removed once no open view can list them.
    pub(crate) fn defer(&self, blobs: &BlobStore, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        {
            let mut st = self.lock();
            st.seq += 1;
            let seq = st.seq;
            st.pending.extend(ids.iter().map(|id| (seq, id.clone())));
        }
        self.purge(blobs);
    }

    /// Removes the trashed bodies that no open view can reach.
    pub(crate) fn purge(&self, blobs: &BlobStore) {
        let gone: Vec<String> = {
            let mut st = self.lock();
            let oldest = st.views.values().copied().min().unwrap_or(u64::MAX);
            let mut out = Vec::new();
            while st.pending.front().is_some_and(|(s, _)| *s <= oldest) {
                if let Some((_, id)) = st.pending.pop_front() {
                    out.push(id);
                }
            }
            out
        };
        for id in gone {
            if let Err(e) = blobs.remove(&id) {
                tracing::warn!(blob = %id, error = %e, "could not remove an unreferenced blob");
            }
        }
    }

    /// Bodies waiting for a view to move on (for tests and metrics).
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

/// One session's view of a mailbox. Call [`ViewPin::synced`] right before reading the message
/// list that becomes the view; dropping the pin lets the bodies it kept go.
pub struct ViewPin {
    trash: Arc<Trash>,
    blobs: BlobStore,
    id: u64,
}

impl ViewPin {
    pub(crate) fn new(trash: Arc<Trash>, blobs: BlobStore) -> ViewPin {
        let id = {
            let mut st = trash.lock();
            st.next_view += 1;
            let (id, seq) = (st.next_view, st.seq);
            st.views.insert(id, seq);
            id
        };
        ViewPin { trash, blobs, id }
    }

    /// The view is about to be replaced by a fresh read of the message list.
    pub fn synced(&self) {
        self.synced_at(self.mark());
    }

    /// The trash's sequence number now: take it before reading a message list, and pass it to
    /// [`ViewPin::synced_at`] once that list has become the whole view.
    pub fn mark(&self) -> u64 {
        self.trash.lock().seq
    }

    /// The view now matches a message list read after `mark`.
    pub fn synced_at(&self, mark: u64) {
        {
            let mut st = self.trash.lock();
            let v = st.views.entry(self.id).or_insert(mark);
            *v = (*v).max(mark);
        }
        self.trash.purge(&self.blobs);
    }
}

impl Drop for ViewPin {
    fn drop(&mut self) {
        self.trash.lock().views.remove(&self.id);
        self.trash.purge(&self.blobs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_stay_until_every_view_moved_on() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(&d.path().join("blobs")).unwrap();
        let trash = Arc::new(Trash::default());
        let a = blobs.put(&[b"a"]).unwrap();
        let b = blobs.put(&[b"b"]).unwrap();
        let old_view = ViewPin::new(trash.clone(), blobs.clone());
        trash.defer(&blobs, std::slice::from_ref(&a));
        assert_eq!(
            blobs.get(&a).unwrap(),
            b"a",
            "an older view may still read it"
        );
        let new_view = ViewPin::new(trash.clone(), blobs.clone());
        new_view.synced();
        assert!(blobs.get(&a).is_ok(), "the older view still holds it");
        old_view.synced();
        assert!(blobs.get(&a).is_err(), "every view moved on");
        // a view that ends lets its bodies go
        trash.defer(&blobs, std::slice::from_ref(&b));
        assert!(blobs.get(&b).is_ok());
        drop(old_view);
        assert!(
            blobs.get(&b).is_ok(),
            "new_view synced before b was trashed"
        );
        drop(new_view);
        assert!(blobs.get(&b).is_err());
        assert_eq!(trash.pending(), 0);
        // no view: removed at once
        let c = blobs.put(&[b"c"]).unwrap();
        trash.defer(&blobs, std::slice::from_ref(&c));
        assert!(blobs.get(&c).is_err());
    }
}
