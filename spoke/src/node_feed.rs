//! The spoke's one Node watch. The node controller and the kernel-versions claim writer read the
//! same trimmed Nodes (`slim::node`), so they share one cache: a second watch would hold every
//! Node twice and keep a second list and connection open (a few MiB at 1,000 Nodes).
//!
//! The node controller drives the watch (its input stream, [`watch`]); the claim writer reads
//! the cache and is woken through [`NodeSignal`]s, sent after the cache took each event.

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::watch;

/// What the Node watch has done so far. Only the latest value is kept: a reader that was busy
/// sees one wake-up for many events, and reads the cache, which holds all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSignal {
    /// The first list is done (the cache holds every Node).
    pub listed: bool,
    /// The last watch error, until the next event that is not one.
    pub error: Option<String>,
    /// Watch errors so far.
    pub errors: u64,
}

impl NodeSignal {
    /// Takes in one event of the watch (pure).
    pub fn see<T>(&mut self, event: &Result<watcher::Event<T>, watcher::Error>) {
        match event {
            Ok(e) => {
                self.error = None;
                self.listed |= matches!(e, watcher::Event::InitDone);
            }
            Err(error) => {
                self.error = Some(error.to_string());
                self.errors += 1;
            }
        }
    }
}

/// The shared Node cache and its wake-ups, for readers that do not drive the watch.
#[derive(Clone)]
pub struct NodeFeed {
    pub nodes: Store<Node>,
    pub signals: watch::Receiver<NodeSignal>,
}

/// The Node watch: trimmed, listed in pages, retried with backoff. Returns the feed for other
/// readers and the stream of applied Nodes (errors included), which must be polled (the node
/// controller's input) for anything to arrive.
pub fn watch(client: Client) -> (NodeFeed, impl Stream<Item = Result<Node, watcher::Error>> + Send) {
    let (nodes, writer) = reflector::store();
    let (tx, signals) = watch::channel(NodeSignal::default());
    let stream = reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client), crate::slim::per_node_watch())
            .modify(crate::slim::node)
            .default_backoff(),
    )
    .inspect(move |event| tx.send_modify(|s| s.see(event)))
    .applied_objects();
    (NodeFeed { nodes, signals }, stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_tracks_the_list_and_clears_an_error_on_the_next_event() {
        let mut s = NodeSignal::default();
        s.see::<Node>(&Ok(watcher::Event::Init));
        assert!(!s.listed);
        s.see::<Node>(&Ok(watcher::Event::InitDone));
        assert!(s.listed);
        s.see::<Node>(&Err(watcher::Error::NoResourceVersion));
        assert_eq!((s.errors, s.error.is_some()), (1, true));
        s.see::<Node>(&Ok(watcher::Event::Init));
        assert_eq!((s.errors, s.error.is_none(), s.listed), (1, true, true));
    }
}
