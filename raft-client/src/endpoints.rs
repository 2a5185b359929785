//! The endpoints of a [`Client`](crate::Client) and what it knows of
//! them: which node each is, and which is the leader.

use std::sync::Mutex;

/// The endpoints and what is known of them.
pub(crate) struct Endpoints {
    pub(crate) urls: Vec<String>,
    state: Mutex<EndpointState>,
}

#[derive(Default)]
struct EndpointState {
    /// The endpoint to try next when no leader is known.
    current: usize,
    /// Node id of each endpoint, once a status answer (or a 421 naming the
    /// leader's address) named it.
    ids: Vec<Option<u64>>,
    /// The leader, as last heard.
    leader: Option<u64>,
}

impl Endpoints {
    pub(crate) fn new(urls: Vec<String>) -> Self {
        let ids = vec![None; urls.len()];
        Self {
            urls,
            state: Mutex::new(EndpointState {
                current: 0,
                ids,
                leader: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint to send to: the leader's when known, else the current.
    pub(crate) fn pick(&self) -> usize {
        let s = self.lock();
        s.leader
            .and_then(|l| s.ids.iter().position(|id| *id == Some(l)))
            .unwrap_or(s.current % self.urls.len())
    }

    /// Endpoint `i` failed: the next one is tried, and the leader is
    /// forgotten unless `hint` names it.
    pub(crate) fn failed(&self, i: usize, hint: Option<u64>) {
        let mut s = self.lock();
        s.current = (i + 1) % self.urls.len();
        s.leader = hint;
    }

    pub(crate) fn learned(&self, i: usize, id: Option<u64>, leader: Option<u64>) {
        let mut s = self.lock();
        if let Some(id) = id {
            // Another endpoint that claimed this id was reassigned.
            for other in s.ids.iter_mut() {
                if *other == Some(id) {
                    *other = None;
                }
            }
            s.ids[i] = Some(id);
        }
        if leader.is_some() {
            s.leader = leader;
        }
    }
}
