//! The threads that serve client connections: each a single-threaded tokio
//! runtime, with every connection from one client address on the same one
//! (nginx's and HAProxy's model).
//!
//! Per-session order needs it. On a work-stealing runtime two connections'
//! tasks run on different threads, and of two requests sent microseconds
//! apart either may reach the gateway's code first: through the gateway a
//! long poll then a close swapped about one time in two. One event loop
//! handles its connections' readiness in the order the kernel reports it,
//! and a session's connections all come from its client's address. It also
//! spares the cross-thread wake-ups a work-stealing pool makes per request.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Serves one accepted connection on the worker's runtime.
pub type Serve = Box<
    dyn FnOnce(
            TcpStream,
            SocketAddr,
            OwnedSemaphorePermit,
        ) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send,
>;

struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    serve: Serve,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start worker thread {index}")]
pub struct WorkerError {
    index: usize,
    #[source]
    source: std::io::Error,
}

/// The worker threads. Dropping this ends each worker once its last
/// connection is done.
pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Accepted>>,
    hasher: ahash::RandomState,
}

impl Workers {
    /// Starts `count` workers (0: one per core). Connections and what they
    /// spawn are tracked by `tasks`; a worker ends once its queue is closed
    /// and `tasks` is closed and empty (the gateway's shutdown).
    pub fn start(count: usize, tasks: &TaskTracker) -> Result<Workers, WorkerError> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut queues = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::unbounded_channel();
            let tasks = tasks.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| WorkerError { index, source })?;
            std::thread::Builder::new()
                .name(format!("stickyio-worker-{index}"))
                .spawn(move || runtime.block_on(run(rx, tasks)))
                .map_err(|source| WorkerError { index, source })?;
            queues.push(tx);
        }
        Ok(Workers {
            queues,
            hasher: ahash::RandomState::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Hands a connection to the worker of its peer's address.
    pub fn dispatch(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        serve: Serve,
    ) {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand the connection to a worker");
                return;
            }
        };
        let mut hasher = self.hasher.build_hasher();
        peer.ip().hash(&mut hasher);
        let index = (std::hash::Hasher::finish(&hasher) % self.queues.len() as u64) as usize;
        let accepted = Accepted {
            stream,
            peer,
            permit,
            serve,
        };
        if self.queues[index].send(accepted).is_err() {
            tracing::warn!(%peer, worker = index, "worker gone: connection dropped");
        }
    }
}

/// A worker: serves what it is handed until the queue closes, then waits for
/// its connections to finish.
async fn run(mut queue: mpsc::UnboundedReceiver<Accepted>, tasks: TaskTracker) {
    while let Some(Accepted {
        stream,
        peer,
        permit,
        serve,
    }) = queue.recv().await
    {
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                tasks.spawn(serve(stream, peer, permit));
            }
            Err(e) => tracing::warn!(%peer, error = %e, "worker cannot take the connection"),
        }
    }
    tasks.wait().await;
}
